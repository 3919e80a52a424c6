"""Issue 30's throughput target: `srtool bench`'s pipeline best against the bare model's best (each
over batch sizes), on the shipped model and on a 3×224×224 model, with the float and the discrete
sampler. Prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_limit.py --imagenet /path/resnet50.onnx --seconds 3

The 3×224×224 model is any ImageNet-shaped ONNX classifier, e.g. a ResNet-50 with random weights
(weights do not change speed) exported outside the repository; without --imagenet only the shipped
model is measured. Every row is one `srtool bench --json` run (rates: medians of its rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(model: str | None, noise: str, seconds: float, threads: int) -> dict:
    args = [sys.executable, "-m", "srtool", "bench", "--noise", noise, "--seconds", str(seconds), "--json",
            "--threads", str(threads)] + (["--model", model] if model else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"srtool bench failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", default=None, help="a 3×224×224 ONNX classifier")
    parser.add_argument("--seconds", type=float, default=3.0, help="srtool bench --seconds")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--noise", default="host,auto", help="samplers, comma-separated (auto: the default)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"`python benchmarks/bench_limit.py {' '.join(sys.argv[1:])}`\n")
    print("| model | noise | bare best fwd/s (batch) | pipeline best fwd/s (batch) | best / best |")
    print("|---|---|---|---|---|")
    from srtool.bench import readable

    for model in [None] + ([args.imagenet] if args.imagenet else []):
        for noise in args.noise.split(","):
            r = bench(model, noise, args.seconds, args.threads)
            print(f"| {Path(r['model']).name} | {noise} | {readable(r['raw_forward_per_s'])} "
                  f"({r['raw_best_batch']}) | {readable(r['pipeline_forward_per_s'])} ({r['batch']}) "
                  f"| {r['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
