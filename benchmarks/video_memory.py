#!/usr/bin/env python3
"""Peak memory (RSS) of `srtool video` on one 300-frame 112×112 video, for the docs.

The model is a random-weight N×3×16×112×112 classifier whose own activations are negligible
(mean over the chunk, then a linear layer), so the peak measures srtool's part: the decoded video,
the noise buffers and the graph's gathered chunks at the default `--batch auto`. A real model such
as MARS' ResNeXt-101 adds its activations for the chunks of one call on top.

    python benchmarks/video_memory.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FRAMES, SIZE = 300, 112


def write_inputs(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(3, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["r"], axes=[2, 3, 4], keepdims=0),
         helper.make_node("Gemm", ["r", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "tiny112.onnx"))
    (folder / "v").mkdir()
    video = folder / "v" / "long.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for t in range(FRAMES):
        frame = np.stack([xx, yy, np.full_like(xx, (t % 50) / 50)], axis=-1)
        writer.write((255 * frame).astype(np.uint8))
    writer.release()
    return folder / "tiny112.onnx", folder / "v"


def peak_rss_mib(command: list[str]) -> float:
    """Peak RSS of one child process (ru_maxrss of the children that finished, in KiB on Linux)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *command], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        model, videos = write_inputs(Path(scratch))
        base = ["srtool", "video", "--model", str(model), "--videos", str(videos), "--sigma", "0.25",
                "--n0", "10", "--n", "100", "--quiet", "--overwrite", "--threads", "2"]
        baseline = peak_rss_mib([sys.executable, "-c", "import onnxruntime, decord, srtool.cli, srtool.video"])
        print(f"python + onnxruntime + decord + srtool imported: {baseline:.0f} MiB")
        for name, extra in [("RS, whole video (18 chunks of 16)", []),
                            ("Smooth-Mean t=64 S=32, input noise (8 sub-videos, 32 chunks)",
                             ["--subvideo", "64", "--stride", "32"]),
                            ("Smooth-Mean t=64 S=32, patch noise", ["--subvideo", "64", "--stride", "32",
                                                                   "--noise-space", "patch"])]:
            out = Path(scratch) / f"r{len(extra)}.parquet"
            peak = peak_rss_mib(base + extra + ["--out", str(out)])
            print(f"{name}: peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
