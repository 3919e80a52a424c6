"""The published DDS pair at full size on the CPU: README's off-the-shelf example, end to end.

Makes guided-diffusion's ImageNet 256x256 unconditional UNet (552,814,086 parameters, the
`adm-imagenet256-uncond` preset, 2.2 GB of float32 weights: past protobuf's 2 GiB) and a
torchvision-layout ResNet-50, both with random weights (seed 0), exports them with srtool's
exporters (benchmarks/gpu.py's export_unet and export_case), writes two 256×256 images, and runs

    srtool certify --model resnet50.onnx --diffusion adm.onnx --images photos/ --image-size 256 \
        --resize 224 --patch-size 224 --sigma 0.5 --n0 2 --n 4

in a child process, recording its wall time and peak memory (the child's maximum resident set), and
each part's seconds per noisy copy: `srtool bench` of the bare UNet and bare classifier against the
composed graph. Artifacts go to --folder (default /tmp/srtool-dds); they are reused when present.
Needs the dev extra (torch) for the exports, about 8 GB of memory for them and 11 GB for the run.

    python benchmarks/dds_fullsize.py [--folder /tmp/srtool-dds]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def photos(folder: Path, count: int = 2) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"photo{i}.png"), rng.integers(0, 256, (300, 280, 3), dtype=np.uint8))
    return folder


def timed(args: list[str]) -> dict:
    """Wall time, peak resident memory (GB) and exit code of a child process; its last stderr line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(time.monotonic() - start, 1), "peak_gb": round(max(peak, before) / 2**20, 2),
            "exit": done.returncode, "stdout": done.stdout[-3000:], "stderr": done.stderr.strip()[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/srtool-dds"))
    parser.add_argument("--bench-seconds", type=float, default=20.0)
    args = parser.parse_args()
    import gpu

    folder = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    report = {}
    began = time.monotonic()
    report["unet_export"] = gpu.export_unet(gpu.diffusion_case(dry_run=False), folder)
    resnet = next(case for case in gpu.cases(dry_run=False) if case.key == "imagenet")
    report["resnet_export"] = gpu.export_case(resnet, folder)
    report["export_seconds"] = round(time.monotonic() - began, 1)
    unet, classifier = Path(report["unet_export"]["fp32"]), Path(report["resnet_export"]["fp32"])
    images = photos(folder / "photos")
    srtool = [sys.executable, "-m", "srtool"]
    report["certify"] = timed([*srtool, "certify", "--model", str(classifier), "--diffusion", str(unet), "--images",
                               str(images), "--image-size", "256", "--resize", "224", "--patch-size", "224",
                               "--sigma", "0.5", "--n0", "2", "--n", "4", "--out", str(folder / "dds.parquet"),
                               "--overwrite"])
    for name, extra in (("bench_composed", ["--model", str(classifier), "--diffusion", str(unet), "--image-size", "256",
                                             "--resize", "224", "--patch-size", "224", "--sigma", "0.5"]),
                        ("bench_classifier", ["--model", str(classifier)])):
        report[name] = timed([*srtool, "bench", *extra, "--seconds", str(args.bench_seconds), "--json"])
        if report[name]["exit"] == 0:
            report[name]["result"] = json.loads(report[name].pop("stdout"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
