#!/usr/bin/env python3
"""Train the small Fashion-MNIST DDPM that srtool ships for one-shot diffusion denoising, and
export it to ONNX under srtool's `--diffusion` contract.

The network is exporters/archs/unet.py's UNetModel (the improved-/guided-diffusion UNet) at a small
configuration, trained as an ε-prediction DDPM (Ho et al., 2020; loss L_simple = ‖ε − ε̂(x_t, t)‖²)
on the 60,000 Fashion-MNIST training images scaled to [-1, 1], with the linear 1000-step schedule
of improved-/guided-diffusion (betas = linspace(1e-4, 0.02, 1000) in float64). srtool uses it for
one-shot denoising only (Carlini et al., 2023): a noisy copy x + δ, δ ~ N(0, σ²) in [0,1] pixel
units, is x_t at the step t* whose √((1−ᾱ)/ᾱ) first reaches 2σ, once scaled by √ᾱ_t*; one call of
the UNet then gives x̂₀. `--t-max` restricts training to the steps t < t-max that one-shot
denoising can use (t*(σ=1) = 396): the model is then no longer a sampler from pure noise, which
srtool never asks of it, and its whole capacity goes to the steps it is used at. The model card
(models/fmnist_ddpm.md) says which range the shipped model was trained on.

Recipe: AdamW, linear warm-up then cosine decay of the learning rate per step, uniform t in
[0, t-max), random horizontal flips, and an exponential moving average (EMA) of the weights, which
is what gets evaluated and exported (standard for DDPMs: the raw weights are noisier). Everything
random comes from one seeded generator and deterministic kernels, so the same seed and --threads
give the same model. A checkpoint (weights, EMA, optimizer, generator, step) is written after every
epoch, so a run can be stopped and resumed (--resume) or exported as it stands (--export-only).

The evaluation (also --eval-only) applies exactly srtool's one-shot step to noisy test images and
reports, per σ: MSE and PSNR of the denoised image against the clean one in [0,1] units, and the
accuracy of a classifier (--classifier, ONNX) on the denoised images, next to the same classifier on
the noisy images and, where given, a noise-trained classifier on the noisy images
(--reference-pattern, one ONNX file per σ).

    python models/train_diffusion.py --epochs 6 --t-max 400 --threads 1 --progress 50 \\
        --ckpt /work/train/fmnist_ddpm.pt --out srtool/assets/fmnist_ddpm.onnx \\
        --classifier srtool/assets/fmnist_cnn_clean.onnx \\
        --reference-pattern 'srtool/assets/fmnist_cnn_sigma{sigma:.2f}.onnx' \\
        --log models/logs/fmnist_ddpm.json

(the shipped model's command; models/fmnist_ddpm.md has its numbers).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporters.archs.unet import UNetModel  # noqa: E402
from models.train_fashion_mnist import DATA_DIR, count_macs, load_split  # noqa: E402

ARCH = "fmnist-ddpm-unet16"
STEPS = 1000
# The small configuration: 16 channels at 28x28, 16 at 14x14, 32 at 7x7 with 4-head attention
# there (and in the middle block), one residual block per level, scale/shift conditioning, no
# learned resampling convolutions. 25.0 M MACs per image in convolutions and linear layers, 26.4 M
# with attention (the 28x28 level holds most of them), against 2.8 M for the classifier.
CONFIG = dict(image_size=28, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
              attention_resolutions=(4,), dropout=0.0, channel_mult=(1, 1, 2), conv_resample=False,
              num_heads=4, use_scale_shift_norm=True, num_groups=8)
SIGMAS = (0.12, 0.25, 0.50)


def alphas_cumprod(steps: int = STEPS) -> np.ndarray:
    """ᾱ_t of improved-/guided-diffusion's linear schedule, t = 0..steps-1, in float64."""
    scale = 1000 / steps
    betas = np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def one_shot_step(abar: np.ndarray, sigma: float) -> int:
    """The first t with √((1−ᾱ_t)/ᾱ_t) ≥ 2σ (the rule of the DDS code; 2σ: [0,1] -> [-1,1])."""
    ratio = np.sqrt((1.0 - abar) / abar)
    return int(np.argmax(ratio >= 2.0 * sigma))


def build_model() -> UNetModel:
    return UNetModel(**CONFIG)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def to_model_range(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28 in [-1, 1]."""
    return x_u8.unsqueeze(1).float().div(127.5).sub(1.0)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    x_train, _ = load_split("train", args.data_dir)
    x_train = torch.from_numpy(x_train.copy())
    abar = torch.from_numpy(alphas_cumprod()).float()

    model = build_model()
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    n = min(len(x_train), args.train_images)
    steps_per_epoch = n // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(0.02 * total_steps))
    state = {"epoch": 0, "step": 0, "epoch_times_s": [], "losses": []}
    if args.resume and args.ckpt.exists():
        saved = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        state = saved["state"]
        print(f"resumed from {args.ckpt} after epoch {state['epoch']}", flush=True)

    for epoch in range(state["epoch"], args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            x0 = to_model_range(x_train[perm[b * args.batch_size:(b + 1) * args.batch_size]])
            flip = torch.rand(len(x0), generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            t = torch.randint(0, args.t_max, (len(x0),), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            a = abar[t][:, None, None, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            for group in opt.param_groups:
                group["lr"] = lr_at(state["step"], total_steps, warmup, args.lr)
            loss = F.mse_loss(model(xt, t.float()), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state["step"] += 1
            # EMA warm-up (as in many DDPM codes): early on, follow the weights more closely.
            decay = min(args.ema, (1 + state["step"]) / (10 + state["step"]))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1.0 - decay)
            loss_sum += loss.item()
            if args.progress and (b + 1) % args.progress == 0:
                print(f"  step {b + 1}/{steps_per_epoch}  loss {loss_sum / (b + 1):.4f}  "
                      f"{time.time() - t0:.0f}s", flush=True)
        dt = time.time() - t0
        state["epoch"] = epoch + 1
        state["epoch_times_s"].append(round(dt, 1))
        state["losses"].append(round(loss_sum / steps_per_epoch, 5))
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "state": state, "config": CONFIG, "args": vars(args)},
                   args.ckpt)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss_sum / steps_per_epoch:.4f}  "
              f"{dt:.1f}s  (checkpoint {args.ckpt})", flush=True)
    return state


def load_ema(ckpt: Path) -> tuple[UNetModel, dict]:
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model()
    model.load_state_dict(saved["ema"])
    return model.eval(), saved["state"]


# --------------------------------------------------------------------------------------------
# Evaluation: srtool's one-shot step on noisy test images
# --------------------------------------------------------------------------------------------
def onnx_predict(path: Path, images: np.ndarray, batch: int = 500) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(images), batch)])


@torch.no_grad()
def denoise(model: UNetModel, noisy: torch.Tensor, abar_t: float, t: int) -> torch.Tensor:
    """One-shot x̂₀ of noisy [0,1] images, back in [0,1] (clamped in [-1, 1] first)."""
    a = torch.tensor(abar_t, dtype=torch.float32)
    xt = a.sqrt() * (2 * noisy - 1)
    out = []
    for i in range(0, len(xt), 500):
        xb = xt[i:i + 500]
        eps = model(xb, torch.full((len(xb),), float(t)))[:, :1]
        out.append(((xb - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1))
    return (torch.cat(out) + 1) / 2


def evaluate(model: UNetModel, args) -> dict:
    x_test, y_test = load_split("t10k", args.data_dir)
    x_test, y_test = x_test[:args.eval_images], y_test[:args.eval_images]
    clean = torch.from_numpy(x_test.copy()).unsqueeze(1).float() / 255.0
    abar = alphas_cumprod()
    results = {"eval_images": len(y_test), "sigmas": {}}
    if args.classifier:
        acc = float((onnx_predict(args.classifier, clean.numpy()) == y_test).mean())
        results["classifier"] = str(args.classifier)
        results["classifier_clean_acc"] = acc
        print(f"classifier {args.classifier.name} on clean test images: {acc:.4f}")
    gen = torch.Generator().manual_seed(args.seed + 20_000)  # not the training noise
    for sigma in args.sigmas:
        t = one_shot_step(abar, sigma)
        noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
        t0 = time.time()
        denoised = denoise(model, noisy, float(abar[t]), t)
        seconds = time.time() - t0
        mse = float(((denoised - clean) ** 2).mean())
        row = {"t_star": t, "mse": mse, "psnr_db": 10 * math.log10(1.0 / mse),
               "mse_noisy": float(((noisy - clean) ** 2).mean()),
               "denoise_s_per_1000": round(1000 * seconds / len(y_test), 2)}
        line = (f"sigma {sigma:.2f}: t* {t}  MSE {mse:.5f}  PSNR {row['psnr_db']:.2f} dB "
                f"(noisy input {10 * math.log10(1.0 / row['mse_noisy']):.2f} dB)")
        if args.classifier:
            row["acc_denoised"] = float((onnx_predict(args.classifier, denoised.numpy()) == y_test).mean())
            row["acc_noisy"] = float((onnx_predict(args.classifier, noisy.numpy()) == y_test).mean())
            line += f"  classifier: denoised {row['acc_denoised']:.4f}, noisy {row['acc_noisy']:.4f}"
        if args.reference_pattern:
            ref = Path(args.reference_pattern.format(sigma=sigma))
            if ref.exists():
                row["reference"] = str(ref)
                row["acc_reference_noisy"] = float((onnx_predict(ref, noisy.numpy()) == y_test).mean())
                line += f", noise-trained {ref.name} on noisy {row['acc_reference_noisy']:.4f}"
        results["sigmas"][f"{sigma:.2f}"] = row
        print(line, flush=True)
    return results


def export(model: UNetModel, out: Path) -> dict:
    """Export under the --diffusion contract, with the exporter's noisy-input parity check."""
    from exporters.diffusion import DiffusionSpec, export_diffusion

    spec = DiffusionSpec(schedule="linear", steps=STEPS, rescale_timesteps=False, learn_sigma=False)
    return export_diffusion(model, spec, out, extra_metadata={
        "srtool.arch": ARCH, "srtool.dataset": "fashion-mnist",
        "srtool.unet_config": json.dumps(CONFIG)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="passes over the 60,000 training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights")
    p.add_argument("--t-max", type=int, default=STEPS,
                   help="train on t uniform in [0, t-max); 1000 = all steps (the standard recipe)")
    p.add_argument("--train-images", type=int, default=60_000,
                   help="use only the first K training images per epoch (short trials)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt")
    p.add_argument("--export-only", action="store_true", help="skip training; use --ckpt as it is")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --ckpt")
    p.add_argument("--out", type=Path, help="output .onnx path")
    p.add_argument("--classifier", type=Path, help="ONNX classifier for the accuracy evaluation")
    p.add_argument("--reference-pattern",
                   help="noise-trained classifiers to compare with, e.g. "
                        "srtool/assets/fmnist_cnn_sigma{sigma:.2f}.onnx")
    p.add_argument("--eval-images", type=int, default=10_000, help="test images to evaluate on")
    p.add_argument("--sigmas", type=lambda s: [float(v) for v in s.split(",")],
                   default=list(SIGMAS))
    p.add_argument("--progress", type=int, default=0, help="print the loss every K steps")
    p.add_argument("--log", type=Path, help="write a JSON summary of the run here")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    macs, _ = count_macs(_WithTime(build_model()), (1, 1, 28, 28))
    params = sum(p.numel() for p in build_model().parameters())
    print(f"arch {ARCH}: {params} parameters, {macs / 1e6:.1f} M MACs (convolutions and linear "
          f"layers) per 28x28 image", flush=True)
    summary = {"arch": ARCH, "config": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in CONFIG.items()},
               "params": params, "macs_conv_linear": macs, "schedule": "linear", "steps": STEPS,
               "t_max": args.t_max, "epochs": args.epochs, "batch_size": args.batch_size,
               "lr": args.lr, "ema": args.ema, "seed": args.seed, "threads": args.threads}
    if not (args.export_only or args.eval_only):
        t0 = time.time()
        state = train(args)
        summary["train_time_s"] = round(time.time() - t0, 1)
    model, state = load_ema(args.ckpt)
    summary.update({"epochs_done": state["epoch"], "steps_done": state["step"],
                    "epoch_times_s": state["epoch_times_s"], "epoch_losses": state["losses"]})
    summary["eval"] = evaluate(model, args)
    if args.out and not args.eval_only:
        summary["export"] = export(model, args.out)
    summary["torch_version"] = torch.__version__
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.log}")


class _WithTime(torch.nn.Module):
    """count_macs calls model(x); the UNet also needs a timestep."""

    def __init__(self, unet: UNetModel):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x, torch.zeros(len(x)))


if __name__ == "__main__":
    main()
