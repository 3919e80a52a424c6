#!/usr/bin/env python3
"""Measure ONNX Runtime CPU throughput of a shipped model, in forward passes (images) per second.

Feeds float32 noisy inputs of shape B x 1 x 28 x 28 (the shape of srtool's sampling batches) to a
CPU session with a fixed number of intra-op threads, after a few warm-up runs, and reports the
median over repeats (the median, because the machine may be shared and a slow outlier says more
about the neighbours than about the model).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help=".onnx files")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = (rng.random((args.batch, 1, 28, 28), dtype=np.float32)
         + 0.25 * rng.standard_normal((args.batch, 1, 28, 28), dtype=np.float32))
    for path in args.models:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(args.warmup):
            sess.run(None, {"input": x})
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sess.run(None, {"input": x})
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{path.name}: batch {args.batch}, {args.threads} threads: median {med * 1e3:.1f} ms "
              f"per batch -> {args.batch / med:,.0f} forward passes/s "
              f"(best {args.batch / min(times):,.0f}, worst {args.batch / max(times):,.0f})")


if __name__ == "__main__":
    main()
