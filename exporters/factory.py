"""Export any PyTorch classifier, denoiser or diffusion UNet to ONNX for srtool, given a function
that builds it.

    python -m exporters.factory --factory mypackage.nets:make_net --kwargs '{"width": 2}' \\
        --checkpoint runs/best.pt --input-shape 3,32,32 \\
        --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 -o mynet.onnx
    python -m exporters.factory --kind denoiser --factory dncnn.py:DnCNN --input-shape 3,32,32 ...
    python -m exporters.factory --kind diffusion --factory ddpm.py:UNet --input-shape 3,32,32 \\
        --schedule linear --steps 1000 ...

`--factory` is `package.module:callable` (importable from the current directory) or
`path/to/file.py:callable`, where the callable may be `Class.method`; it must return an nn.Module.
`--kind classifier` (the default): it maps N×C×H×W (or N×C×T×H×W) to N×classes logits; if the
network expects normalized input, give --mean/--std (and --scale 255 for networks fed 0-255 pixels):
srtool feeds [0,1] pixels, so the normalization goes inside the graph. `--kind denoiser`: N×C×H×W
noisy image in [0,1] units to the same shape (plus the noise level as second input with
--noise-level-shape, for non-blind denoisers); `--kind diffusion`: (x in [-1,1], t) -> ε. These two
are exported and checked on noisy inputs by exporters/diffusion.py, which states both contracts.
srtool.arch records a file by its name only.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a plain script: import as the package
    import pathlib
    import sys

    _here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from exporters.common import (ExportError, Job, Preprocess, WithPreprocess, add_common_arguments,
                              base_metadata, export_and_verify, fit_state_dict, import_factory,
                              factory_name, info, load_checkpoint, parse_floats, parse_shape,
                              program_name, read_classes, resolve_sigma, run_cli, sha256_file,
                              unwrap_checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("factory"),
        description="Export your own PyTorch classifier to a self-contained ONNX model that takes "
                    "[0,1] pixels, then check it against PyTorch.")
    parser.add_argument("--factory", required=True,
                        help="package.module:callable or file.py:callable (or …:Class.method) returning "
                             "the nn.Module")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for it")
    parser.add_argument("--checkpoint", type=Path,
                        help="state dict to load (bare, or under 'state_dict'/'model_state_dict'/"
                             "'model'); omit if the factory loads its own weights")
    parser.add_argument("--prefix", default="",
                        help="key prefix the checkpoint's keys carry (e.g. 'module.'); common "
                             "wrapper prefixes are also recognised on their own")
    parser.add_argument("--input-shape", required=True, help="C,H,W (images) or C,T,H,W (videos)")
    parser.add_argument("--mean", help="per-channel mean subtracted inside the graph")
    parser.add_argument("--std", help="per-channel std divided by inside the graph (needs --mean)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply [0,1] input by this first (255 for 0-255 networks)")
    parser.add_argument("--name", help="architecture name to record (default: the factory)")
    parser.add_argument("--kind", choices=("classifier", "denoiser", "diffusion"),
                        default="classifier", help="what the model is (default: classifier)")
    group = parser.add_argument_group("--kind denoiser")
    group.add_argument("--noise-level-shape",
                       help="non-blind denoisers: shape of the noise-level input without the batch "
                            "axis, e.g. 1,1,1 or 1,32,32, or '' for one value per image (shape N) "
                            "(srtool fills it with sigma*sigma-scale)")
    group.add_argument("--sigma-scale", type=float, default=1.0,
                       help="units of the noise level: 1 = [0,1] pixel units, 255 = 0-255 units")
    group.add_argument("--sigma-range", help="lo,hi: noise levels ([0,1] units) it was trained for")
    group = parser.add_argument_group("--kind diffusion")
    group.add_argument("--schedule", choices=("linear", "cosine"),
                       help="the named beta schedule (improved-/guided-diffusion's definitions)")
    group.add_argument("--steps", type=int, help="diffusion steps T of the schedule")
    group.add_argument("--alphas-cumprod", type=Path,
                       help="instead of --schedule/--steps: a JSON list or .npy of the T values of ᾱ")
    group.add_argument("--rescale-timesteps", action="store_true",
                       help="the model was fed t*1000/T instead of t")
    group.add_argument("--learn-sigma", action="store_true",
                       help="the model returns 2C channels, ε first")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_shape = parse_shape(args.input_shape)
    if args.kind != "classifier":
        return export_image_model(args, input_shape)
    channels = input_shape[0]
    mean = parse_floats(args.mean, "--mean", channels) if args.mean else None
    std = parse_floats(args.std, "--std", channels) if args.std else None
    if std is not None and mean is None:
        raise ExportError("--std needs --mean (pass zeros for a division only)")
    net = build_net(args)

    kind = "none" if mean is None else ("normalize" if std is not None else "center")
    if args.scale != 1.0:
        kind = f"scale{args.scale:g}_{kind}"
    pre = Preprocess(kind, args.scale, mean, std)
    info(f"normalization: {pre.describe()}")
    try:
        with torch.no_grad():  # the output width, from one forward pass on the declared shape
            probe = net(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ExportError(f"the model fails on an input of shape N,{args.input_shape}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if probe.ndim != 2:
        raise ExportError(f"the model returns shape {list(probe.shape)}; srtool needs N×classes logits")
    num_classes = int(probe.shape[1])
    classes = read_classes(args.classes) if args.classes else None
    sigma = resolve_sigma(args.sigma, args.checkpoint)
    name = args.name or factory_name(args.factory)
    out = args.out or Path(f"{name.rpartition(':')[2]}.onnx")
    meta = base_metadata(name, kind, num_classes, classes, sigma, args.checkpoint, pre)
    job = Job(WithPreprocess(net, pre, len(input_shape) + 1), input_shape, out, meta,
              fp16=args.fp16, opset=args.opset, parity_batch=args.parity_batch, seed=args.seed,
              force=args.force)
    return export_and_verify(job)


def _kwargs(args: argparse.Namespace) -> dict:
    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError
    except ValueError:
        raise ExportError(f"--kwargs must be a JSON object, got '{args.kwargs}'") from None
    return kwargs


def build_net(args: argparse.Namespace) -> nn.Module:
    factory = import_factory(args.factory)
    try:
        net = factory(**_kwargs(args))
    except Exception as exc:
        raise ExportError(f"--factory {args.factory} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ExportError(f"--factory {args.factory} returned a {type(net).__name__}, not an nn.Module")
    if args.checkpoint:
        state_dict, _ = unwrap_checkpoint(
            load_checkpoint(args.checkpoint, args.trust_checkpoint), args.checkpoint)
        fit_state_dict(net, state_dict, args.prefix, args.factory)
        info(f"loaded {args.checkpoint} into {args.factory}")
    return net.eval()


def read_alphas_cumprod(path: Path) -> tuple[float, ...]:
    try:
        values = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read --alphas-cumprod {path}: {exc}") from None
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not len(values) or not np.all((values > 0) & (values < 1)) \
            or np.any(np.diff(values) >= 0):
        raise ExportError(f"--alphas-cumprod {path} must be a decreasing list of values in (0, 1)")
    return tuple(float(v) for v in values)


def export_image_model(args: argparse.Namespace, input_shape: tuple[int, ...]) -> int:
    """--kind denoiser|diffusion: exported and checked on noisy inputs (exporters/diffusion.py)."""
    from exporters.diffusion import DiffusionSpec, denoiser_job, diffusion_job, export_and_check

    if len(input_shape) != 3:
        raise ExportError(f"--kind {args.kind} takes images: --input-shape C,H,W")
    if args.mean or args.std or args.scale != 1.0:
        raise ExportError(f"--mean/--std/--scale are for classifiers; a {args.kind} must take "
                          f"{'[0,1] pixels' if args.kind == 'denoiser' else '[-1,1] data'} itself")
    if args.fp16:
        raise ExportError(f"--fp16 is not supported for --kind {args.kind}")
    net = build_net(args)
    name = args.name or factory_name(args.factory)  # a file by its name, never its path
    meta = {"srtool.arch": name}
    if args.checkpoint:
        meta["srtool.source_sha256"] = sha256_file(args.checkpoint)
    out = args.out or Path(f"{name.rpartition(':')[2]}.onnx")
    if args.kind == "denoiser":
        level = parse_shape_any(args.noise_level_shape) if args.noise_level_shape is not None else None
        if args.sigma_scale <= 0:
            raise ExportError(f"--sigma-scale must be positive, got {args.sigma_scale}")
        span = None
        if args.sigma_range:
            span = parse_floats(args.sigma_range, "--sigma-range", 2)
            if not 0 <= span[0] < span[1]:
                raise ExportError(f"--sigma-range must be lo,hi with 0 <= lo < hi, got {args.sigma_range}")
        job = denoiser_job(net, input_shape, meta, level, args.sigma_scale, span,
                           batch=args.parity_batch, seed=args.seed, opset=args.opset)
    else:
        if args.alphas_cumprod:
            if args.schedule or args.steps:
                raise ExportError("give --alphas-cumprod or --schedule/--steps, not both")
            spec = DiffusionSpec(None, 0, args.rescale_timesteps, args.learn_sigma,
                                 read_alphas_cumprod(args.alphas_cumprod))
        elif args.schedule and args.steps:
            spec = DiffusionSpec(args.schedule, args.steps, args.rescale_timesteps, args.learn_sigma)
        else:
            raise ExportError("--kind diffusion needs the noise schedule: --schedule and --steps, "
                              "or --alphas-cumprod")
        job = diffusion_job(net, spec, input_shape, meta, batch=args.parity_batch,
                            seed=args.seed, opset=args.opset)
    summary = export_and_check(job, out, args.force)
    return 0 if summary["ok"] else 1


def parse_shape_any(text: str) -> tuple[int, ...]:
    """`1,32,32` → (1, 32, 32); '' → (): a noise level of shape N, one value per image."""
    if not text.strip():
        return ()
    try:
        shape = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ExportError(f"--noise-level-shape must be comma-separated integers, got '{text}'") from None
    if min(shape) < 1:
        raise ExportError(f"--noise-level-shape must be positive integers, got '{text}'")
    return shape


if __name__ == "__main__":
    sys.exit(run_cli(main))
