#!/usr/bin/env python3
"""Write the Fashion-MNIST sample that srtool ships next to its default models.

The sample is every 20th image of the 10,000 test images (indices 0, 20, 40, ..., 9980), so it is
500 images with the test set's class balance, small enough to ship in the wheel, and the indices
can be mapped back to the full test set (sample row i is test image 20*i).

Output: a compressed .npz with
    x  uint8  N x 28 x 28   raw pixels (0..255); srtool divides by 255 to get [0,1] units
    y  int64  N             class labels 0..9
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# The IDX reader lives in the training script; reuse it so both read the data the same way.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion_mnist import DATA_DIR, load_split  # noqa: E402

STRIDE = 20


def main() -> None:
    p = argparse.ArgumentParser(description="Write srtool's Fashion-MNIST sample (.npz).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent.parent
                   / "srtool" / "assets" / "fashion_mnist_sample.npz")
    p.add_argument("--stride", type=int, default=STRIDE, help="keep test images 0, k, 2k, ...")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args()

    x, y = load_split("t10k", args.data_dir)
    x = np.ascontiguousarray(x[::args.stride], dtype=np.uint8)
    y = np.ascontiguousarray(y[::args.stride], dtype=np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y)

    size = args.out.stat().st_size
    print(f"wrote {args.out}: x {x.shape} {x.dtype}, y {y.shape} {y.dtype}, "
          f"per class {np.bincount(y, minlength=10).tolist()}, {size} bytes")
    if size > 1_000_000:
        raise SystemExit("sample is larger than 1 MB")


if __name__ == "__main__":
    main()
