#!/usr/bin/env python3
"""Check a shipped Fashion-MNIST ONNX model on the 10,000 test images with ONNX Runtime (CPU).

Independent of torch: it runs the exported file, so it checks what ships. Reports
  * clean accuracy,
  * accuracy on one Gaussian draw per image at the model's trained sigma (srtool.sigma metadata),
    noise in [0,1] pixel space, no clipping, from numpy's PCG64 with a fixed seed,
  * the same noisy images resized 28->32 (bilinear, half-pixel centres, as srtool's Resize node)
    and cut into the four 28x28 corner crops of the Smooth-Reduce plan: accuracy of each crop on
    its own (is a crop in the model's distribution?) and of the mean softmax over the four crops.
These are single-draw numbers, not smoothed-classifier accuracies (use `srtool predict` for those).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion_mnist import DATA_DIR, load_split  # noqa: E402


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args()

    x_u8, y = load_split("t10k", args.data_dir)
    x = x_u8.astype(np.float32)[:, None] / 255.0
    for path in args.models:
        meta = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
        sigma = float(meta["srtool.sigma"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def logits(batch: np.ndarray) -> np.ndarray:
            return np.concatenate([sess.run(["logits"], {"input": batch[i:i + 1000]})[0]
                                   for i in range(0, len(batch), 1000)])

        clean = (logits(x).argmax(1) == y).mean()
        rng = np.random.default_rng(args.seed)
        noisy_x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
        noisy = (logits(noisy_x).argmax(1) == y).mean()

        # 28 -> 32 with OpenCV INTER_LINEAR (half-pixel centres, like ONNX Resize half_pixel).
        big = np.stack([cv2.resize(im[0], (32, 32), interpolation=cv2.INTER_LINEAR)
                        for im in noisy_x])[:, None]
        crop_acc, probs = [], 0.0
        for dy, dx in [(0, 0), (0, 4), (4, 0), (4, 4)]:
            z = logits(np.ascontiguousarray(big[:, :, dy:dy + 28, dx:dx + 28]))
            crop_acc.append((z.argmax(1) == y).mean())
            probs = probs + softmax(z)
        mean4 = (probs.argmax(1) == y).mean()
        print(f"{path.name} (sigma {sigma}): clean {clean:.4f}, one noisy draw {noisy:.4f}, "
              f"corner crops of 28->32 (one noisy draw) {' '.join(f'{a:.4f}' for a in crop_acc)} "
              f"(mean {np.mean(crop_acc):.4f}), mean softmax of 4 crops {mean4:.4f}")


if __name__ == "__main__":
    main()
