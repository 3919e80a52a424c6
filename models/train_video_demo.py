#!/usr/bin/env python3
"""Train the tiny 3D CNN behind `srtool video`'s demo, export it to ONNX, and write the sample videos.

The data set is generated here: a Fashion-MNIST sprite (any garment, random colour, size and
opacity: the actor) moves over a static textured background in a way that defines the class, while
two other sprites (distractors) wobble in place or drift slowly (at most 0.2 px/frame). Classes:
right, left, up, down (straight motion at 0.6-1.5 px/frame, wrapping around the frame, heading
within ±30°), clockwise, counterclockwise (circles of random centre, radius and speed). One frame
shows three garments and says nothing about the class; only motion does.

Every video goes through the same path as at certification time: written with OpenCV's `mp4v`
encoder and read back with srtool's decord reader, so the model is trained on decoded frames.

The model is a base classifier for randomized smoothing, so it is trained on Gaussian-noised
16-frame chunks, x + sigma·N(0, 1) in [0,1] pixel units (no clipping), at random temporal offsets
of longer videos, because Smooth-Reduce feeds it chunks at every offset its sub-videos produce.

Output: float32 N×3×16×32×32 in [0,1] RGB → N×6 logits, one ONNX file with srtool.* metadata.

    python models/train_video_demo.py            # trains, exports, writes srtool/assets/video_demo/
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # srtool's own reader, so training sees what certification sees
from srtool.video import read_video  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["right", "left", "up", "down", "clockwise", "counterclockwise"]
ARCH = "c3d-tiny"
SIZE = 32  # frame edge
CHUNK = 16  # frames per model input
FPS = 25


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """A gzipped unsigned-byte IDX file (MNIST's container) as a numpy array."""
    raw = gzip.decompress(path.read_bytes())
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _sprite(image: np.ndarray, size: int) -> np.ndarray:
    """A 28×28 garment as a size×size alpha mask in [0,1], placed in the top-left of a frame."""
    # Many garments are dim grey; stretching them to full opacity keeps every sprite visible.
    alpha = image.astype(np.float32) / max(1.0, 0.6 * float(image.max()))
    alpha = cv2.resize(np.clip(alpha, 0, 1), (size, size), interpolation=cv2.INTER_AREA)
    layer = np.zeros((SIZE, SIZE), dtype=np.float32)
    layer[:size, :size] = alpha
    return layer


def _place(layer: np.ndarray, x: float, y: float) -> np.ndarray:
    """Move the top-left sprite layer by (x, y) pixels, sub-pixel and wrapping around the frame."""
    shift = np.array([[1, 0, x], [0, 1, y]], dtype=np.float32)
    return cv2.warpAffine(layer, shift, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def actor_path(rng: np.random.Generator, label: int, frames: int) -> np.ndarray:
    """(frames, 2) centre positions (x, y) of the actor; the motion is the class."""
    t = np.arange(frames, dtype=np.float64)
    if label < 4:  # right, left, up, down; y grows downwards
        heading = [0.0, math.pi, -math.pi / 2, math.pi / 2][label] + rng.uniform(-1, 1) * math.radians(30)
        speed = rng.uniform(0.6, 1.5)
        start = rng.uniform(0, SIZE, size=2)
        return start + speed * t[:, None] * np.array([math.cos(heading), math.sin(heading)])
    centre = rng.uniform(SIZE * 0.3, SIZE * 0.7, size=2)
    radius = rng.uniform(4.0, 8.0)
    omega = rng.uniform(2 * math.pi / 32, 2 * math.pi / 14) * (1 if label == 4 else -1)  # + = clockwise on screen
    phase = rng.uniform(0, 2 * math.pi)
    angle = phase + omega * t
    return centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def distractor_path(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A sprite that wobbles in place or drifts slowly (at most 0.2 px/frame, any direction)."""
    home = rng.uniform(0, SIZE, size=2)
    wobble = np.cumsum(rng.normal(0, 0.6, size=(frames, 2)), axis=0)
    wobble -= np.linspace(0, 1, frames)[:, None] * wobble[-1]  # no net drift from the wobble itself
    heading = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(0, 0.2) * np.arange(frames)[:, None] * np.array([math.cos(heading), math.sin(heading)])
    return home + wobble + drift


def render(rng: np.random.Generator, label: int, frames: int, garments: np.ndarray) -> np.ndarray:
    """One video, uint8 RGB (frames, SIZE, SIZE, 3): textured background, two distractors, the actor."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = rng.uniform(0.0, 0.4, size=3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, size=(2, 3)).astype(np.float32)
    texture = cv2.resize(rng.uniform(-0.06, 0.06, size=(4, 4, 3)).astype(np.float32), (SIZE, SIZE),
                         interpolation=cv2.INTER_CUBIC)
    background = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + texture

    layers = []
    for _ in range(2):
        size = int(rng.integers(8, 15))
        sprite = _sprite(garments[rng.integers(len(garments))], size) * rng.uniform(0.4, 0.9)
        layers.append((sprite, rng.uniform(0.2, 0.9, size=3).astype(np.float32), distractor_path(rng, frames) - size / 2))
    size = int(rng.integers(10, 17))
    # A semi-transparent actor: low contrast, so one noisy chunk is often not enough to be sure.
    actor = _sprite(garments[rng.integers(len(garments))], size) * rng.uniform(0.5, 0.9)
    layers.append((actor, rng.uniform(0.4, 1.0, size=3).astype(np.float32), actor_path(rng, label, frames) - size / 2))

    video = np.empty((frames, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        for layer, colour, path in layers:
            alpha = _place(layer, *path[i])[..., None]
            frame = frame * (1 - alpha) + colour * alpha
        video[i] = np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8)
    return video


def write_mp4(path: Path, video: np.ndarray) -> None:
    """RGB uint8 frames → an `mp4v` file (OpenCV writes BGR)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (video.shape[2], video.shape[1]))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v")
    for frame in video:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def make_set(count: int, frames: int, garments: np.ndarray, seed: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """`count` videos (classes balanced), encoded to mp4v and decoded by srtool: float16 (N, 3, T, H, W)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    rng.shuffle(labels)
    videos = np.empty((count, 3, frames, SIZE, SIZE), dtype=np.float16)
    path = work / f"tmp-{seed}.mp4"
    for i, label in enumerate(labels):
        write_mp4(path, render(rng, int(label), frames, garments))
        decoded = read_video(str(path), (SIZE, SIZE))
        if decoded.shape[1] != frames:
            raise RuntimeError(f"decoded {decoded.shape[1]} frames of {frames}")
        videos[i] = decoded
    path.unlink()
    return videos, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def block(c_in: int, c_out: int, stride) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True)]


class TinyC3D(nn.Module):
    """Four 3×3×3 conv blocks (width, 2·width, 4·width, 4·width channels), global average pool, linear head."""

    def __init__(self, classes: int = len(CLASSES), width: int = 12):
        super().__init__()
        self.features = nn.Sequential(
            *block(3, width, (1, 2, 2)),  # 16×16×16
            *block(width, 2 * width, 2),  # 8×8×8
            *block(2 * width, 4 * width, 2),  # 4×4×4
            *block(4 * width, 4 * width, 1))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5  # inside the graph: sigma is defined on [0,1] pixels
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def random_chunks(videos: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """A random CHUNK-frame window of every video (Smooth-Reduce's chunks start anywhere)."""
    starts = rng.integers(0, videos.shape[2] - CHUNK + 1, size=len(videos))
    return torch.from_numpy(np.stack([v[:, s:s + CHUNK] for v, s in zip(videos, starts)]).astype(np.float32))


def video_logits(model: nn.Module, videos: np.ndarray, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """The base classifier on whole videos: mean logits over non-overlapping chunks (MARS)."""
    chunks = videos.shape[2] // CHUNK
    x = torch.from_numpy(videos[:, :, :chunks * CHUNK].astype(np.float32))
    n = len(x)
    x = x.reshape(n, 3, chunks, CHUNK, SIZE, SIZE).permute(0, 2, 1, 3, 4, 5).reshape(-1, 3, CHUNK, SIZE, SIZE)
    if sigma:
        x = x + sigma * torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        return model(x).reshape(n, chunks, -1).mean(dim=1)


def accuracy(model: nn.Module, videos: np.ndarray, labels: np.ndarray, sigma: float, seed: int = 0) -> float:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for start in range(0, len(videos), 100):
        logits = video_logits(model, videos[start:start + 100], sigma, generator)
        hits += int((logits.argmax(1).numpy() == labels[start:start + 100]).sum())
    return hits / len(videos)


def train(args, train_set, test_set) -> tuple[nn.Module, dict]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    (x_train, y_train), (x_test, y_test) = train_set, test_set
    model = TinyC3D(width=args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                   pct_start=0.15)
    history = []
    start_time = time.time()
    for epoch in range(args.epochs):
        model.train()
        # Salman et al.'s noise warm-up (the paper's video recipe): sigma grows over the first epochs.
        sigma = args.sigma * min(1.0, (epoch + 1) / max(1, args.warmup))
        order = rng.permutation(len(x_train))
        total, correct, loss_sum = 0, 0, 0.0
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = random_chunks(x_train[index], rng)
            x = x + sigma * torch.randn_like(x)
            y = torch.from_numpy(y_train[index])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
        noisy = accuracy(model, x_test, y_test, args.sigma, seed=epoch)
        history.append({"epoch": epoch + 1, "sigma": round(sigma, 4), "train_loss": round(loss_sum / total, 4),
                        "train_acc_noisy": round(correct / total, 4), "test_acc_noisy_1draw": round(noisy, 4),
                        "elapsed_s": round(time.time() - start_time, 1)})
        print(json.dumps(history[-1]), flush=True)
    summary = {
        "arch": ARCH, "width": args.width, "params": sum(p.numel() for p in model.parameters()),
        "sigma": args.sigma, "epochs": args.epochs, "warmup_epochs": args.warmup, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
        "train_videos": len(x_train), "test_videos": len(x_test), "train_frames": x_train.shape[2],
        "test_frames": x_test.shape[2], "train_time_s": round(time.time() - start_time, 1),
        "test_acc_clean": accuracy(model, x_test, y_test, 0.0),
        "test_acc_noisy_1draw": accuracy(model, x_test, y_test, args.sigma, seed=1234),
        "history": history,
    }
    print(f"test accuracy (whole videos, chunk-averaged): clean {summary['test_acc_clean']:.4f}, "
          f"one noisy draw at sigma {args.sigma} {summary['test_acc_noisy_1draw']:.4f}")
    return model, summary


# --------------------------------------------------------------------------------------------
# Export and assets
# --------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, out: Path, sigma: float, check: np.ndarray) -> dict:
    """One self-contained ONNX file (opset 17, dynamic batch) with srtool.* metadata, checked vs torch."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, CHUNK, SIZE, SIZE)
    # dynamo=False: the TorchScript exporter embeds the weights in the file (no .onnx.data) and
    # folds the batch norms into the convolutions.
    torch.onnx.export(model, (dummy,), str(out), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, {
        "srtool.input_shape": f"3,{CHUNK},{SIZE},{SIZE}",
        "srtool.classes": json.dumps(CLASSES),
        "srtool.sigma": f"{sigma:.2f}",
        "srtool.dataset": "synthetic moving Fashion-MNIST sprites (models/train_video_demo.py)",
        "srtool.arch": ARCH,
    })
    proto.doc_string = (f"Tiny 3D CNN ({ARCH}) for srtool's video demo, trained with Gaussian noise sigma={sigma:.2f}; "
                        f"input float32 Nx3x{CHUNK}x{SIZE}x{SIZE} RGB in [0,1]; output Nx{len(CLASSES)} logits.")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    if out.with_name(out.name + ".data").exists():
        raise RuntimeError("export wrote a side .onnx.data file; the model must be self-contained")
    x = torch.from_numpy(check[:, :, :CHUNK].astype(np.float32))
    x = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = model(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x.numpy()})[0]
    diff = float(np.abs(got - reference).max())
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    print(f"wrote {out} ({out.stat().st_size} bytes); ORT vs torch max |diff| {diff:.2e}, argmax agreement {agree:.4f}")
    return {"onnx_path": os.path.relpath(out, ROOT), "onnx_bytes": out.stat().st_size,
            "ort_vs_torch_max_abs_diff": diff, "ort_vs_torch_argmax_agreement": agree}


def write_assets(folder: Path, per_class: int, frames: int, garments: np.ndarray, seed: int) -> dict:
    """The shipped sample videos: folder/<class>/<class>_<i>.mp4 (test-split garments, own seed)."""
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    total = 0
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            path = folder / name / f"{name}_{i}.mp4"
            write_mp4(path, render(rng, label, frames, garments))
            total += path.stat().st_size
    print(f"wrote {per_class * len(CLASSES)} videos to {folder} ({total} bytes)")
    return {"videos": per_class * len(CLASSES), "frames": frames, "bytes": total, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="epochs over which sigma ramps up")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--train-videos", type=int, default=3000)
    parser.add_argument("--test-videos", type=int, default=600)
    parser.add_argument("--train-frames", type=int, default=40)
    parser.add_argument("--frames", type=int, default=48, help="frames of test and shipped videos")
    parser.add_argument("--per-class", type=int, default=4, help="shipped videos per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "srtool/assets/video_demo_sigma0.25.onnx")
    parser.add_argument("--assets", type=Path, default=ROOT / "srtool/assets/video_demo")
    parser.add_argument("--work", type=Path, default=ROOT / "models/work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    args.work.mkdir(parents=True, exist_ok=True)

    train_garments = read_idx(DATA_DIR / "train-images-idx3-ubyte.gz")
    test_garments = read_idx(DATA_DIR / "t10k-images-idx3-ubyte.gz")
    started = time.time()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        train_set = make_set(args.train_videos, args.train_frames, train_garments, args.seed + 1, Path(scratch))
        test_set = make_set(args.test_videos, args.frames, test_garments, args.seed + 2, Path(scratch))
    print(f"made {len(train_set[0])} training and {len(test_set[0])} test videos in {time.time() - started:.0f} s")
    model, summary = train(args, train_set, test_set)
    summary["export"] = export_onnx(model, args.out, args.sigma, test_set[0][:64])
    summary["assets"] = write_assets(args.assets, args.per_class, args.frames, test_garments, args.seed + 3)
    (args.work / "video_demo_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"summary: {args.work / 'video_demo_summary.json'}")


if __name__ == "__main__":
    main()
