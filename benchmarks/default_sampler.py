"""The default sampler against the float one: certified accuracy and time per input.

`--noise auto` (the default) draws the exact discretized Gaussian on the 1/255 grid; `--noise host`
the float Box–Muller sampler that was the default before. Both certify:
- the shipped σ = 0.25 model on every 50th of the 10,000 Fashion-MNIST test images (Debian's
  dataset-fashion-mnist: 200 images), n0 = 100, n = 10,000, α = 0.001;
- a 3×224×224 model (a random-weight CNN of about 190 M multiply-adds written here with onnx.helper,
  `wide_model`: its accuracy means nothing, its time per input is what a 224×224 input costs) on a few of the same images
  resized on load (--image-size 224, grey copied to RGB), n0 = 100, n = 1,000.
Runs alternate (float, default, float, default, …) so that a shared machine's load hits both alike;
each run is timed by its own wall clock. Prints a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/default_sampler.py                       # about 10 minutes on 2 cores
    python benchmarks/default_sampler.py --n 1000 --skip 500   # a smoke run
    python benchmarks/default_sampler.py --wide-model /tmp/wide224.onnx --only-model   # write the 224 model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
from onnx import TensorProto, helper

IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
SAMPLERS = {"float (--noise host, the old default)": "host", "discrete (the default)": "auto"}


def wide_model(path: Path) -> Path:
    """A 3×224×224 → 10 classes CNN with random weights, about 190 M multiply-adds per image (the cost
    class of EfficientNet-Lite0 or MobileNet): four 3×3 stride-2 convolutions (32, 64, 128, 256
    channels) with ReLU, global pooling, a dense layer."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32).ravel())

    nodes, inits, previous, channels = [], [], "x", 3
    for i, width in enumerate((32, 64, 128, 256)):
        nodes += [helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], strides=[2, 2], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        inits.append(weight(f"w{i}", width, channels, 3, 3))
        previous, channels = f"r{i}", width
    nodes += [helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "dense"], ["logits"], transB=1)]
    inits.append(weight("dense", 10, channels))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"srtool.input_shape": "3,224,224", "srtool.sigma": "0.25"})
    onnx.save(model, str(path))
    return path


def certify(args: list, out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "srtool", "certify", *map(str, args), "--out", str(out),
                           "--overwrite", "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"srtool certify {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    seconds = time.perf_counter() - start
    table = pq.read_table(out)
    config = json.loads(table.schema.metadata[b"srtool"])
    correct = np.array(table.column("correct").to_pylist(), bool)
    radius = np.array([r or 0.0 for r in table.column("radius").to_pylist()])
    return {"rows": table.num_rows, "seconds": seconds, "noise": config["noise"],
            "certified": {r: float(np.mean(correct & (radius >= r))) for r in (0.0, 0.25, 0.5)},
            "acr": float(np.mean(correct * radius))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--skip", type=int, default=50)
    parser.add_argument("--wide-n", type=int, default=1000)
    parser.add_argument("--wide-max", type=int, default=150, help="images before this index (every 50th)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--wide-model", type=Path, help="also keep the 3×224×224 model at this path")
    parser.add_argument("--only-model", action="store_true", help="write --wide-model and stop")
    args = parser.parse_args()
    if args.wide_model:
        wide_model(args.wide_model)
        if args.only_model:
            return
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        wide = wide_model(folder / "wide224.onnx")
        jobs = {"shipped 1×28×28": ["--images", IMAGES, "--skip", args.skip, "--n0", 100, "--n", args.n],
                "random CNN 3×224×224": ["--model", wide, "--images", IMAGES, "--image-size", 224, "--skip", 50,
                                         "--max", args.wide_max, "--n0", 100, "--n", args.wide_n]}
        rows = []
        for job, options in jobs.items():
            measured = {name: [] for name in SAMPLERS}
            for _ in range(args.repeats):
                for name, mode in SAMPLERS.items():
                    measured[name].append(certify([*options, "--noise", mode], folder / f"{mode}.parquet"))
            for name, runs in measured.items():
                first = runs[0]
                per_input = float(np.median([r["seconds"] / r["rows"] for r in runs]))
                rows.append(f"| {job} | {name} | {first['noise']} | {first['rows']} | "
                            + " | ".join(f"{100 * first['certified'][r]:.1f}%" for r in (0.0, 0.25, 0.5))
                            + f" | {first['acr']:.3f} | {per_input:.3f} |")
    print("| model | sampler | `noise` recorded | inputs | acc | @0.25 | @0.5 | ACR | s per input (median of "
          f"{args.repeats}, wall clock incl. start-up) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
