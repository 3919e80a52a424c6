"""Export a Cohen et al. (locuslab/smoothing) or Salman et al. (SmoothAdv) checkpoint to ONNX.

    python -m exporters.smoothing models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \\
        -o cifar_resnet110.onnx

The checkpoint is the training scripts' torch.save'd dict {'arch': ..., 'state_dict': ..., ...};
the architecture comes from its 'arch' unless --arch says otherwise. The normalization layer that
sat in front of the network at training time holds no tensors, so the checkpoint cannot say which
one it was: --normalize picks it, and by default the checkpoint path decides (see `path_hint`).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a plain script: import as the package
    import pathlib
    import sys

    _here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from exporters.archs import SMOOTHING_ARCHS, Arch
from exporters.common import (ExportError, Job, Preprocess, WithPreprocess, add_common_arguments,
                              base_metadata, export_and_verify, fit_state_dict, info,
                              load_checkpoint, read_classes, resolve_sigma, run_cli,
                              program_name, unwrap_checkpoint, warn)

NORMALIZE_HELP = {
    "normalize": "NormalizeLayer, (x - mean) / std",
    "center": "InputCenterLayer, x - mean (no division)",
}


def path_hint(path: str | Path) -> tuple[str | None, str]:
    """Which input layer the checkpoint's path suggests, and why.

    Facts behind it: Cohen et al. trained everything with NormalizeLayer. Salman et al.'s paper
    models (ImageNet, and CIFAR-10 trained from scratch) used the mean-only InputCenterLayer; their
    later ImageNet-32 pretrained models and the CIFAR-10 models fine-tuned from them switched back
    to NormalizeLayer. A wrong choice does not fail, it silently ruins accuracy, hence the warning.
    """
    p = str(path).replace("\\", "/").lower()
    if any(s in p for s in ("imagenet32", "finetune_cifar_from_imagenet", "pretraining",
                            "self_training", "selftraining")):
        return "normalize", ("the path looks like Salman et al.'s ImageNet-32 pretrained or "
                             "fine-tuned models, trained with NormalizeLayer")
    if any(s in p for s in ("smoothing-adversarial", "smoothadv", "pgd", "ddn",
                            "pretrained_models")):
        return "center", ("the path looks like a SmoothAdv checkpoint (Salman et al.): its ImageNet "
                          "and most CIFAR-10 models use the mean-only InputCenterLayer")
    if re.search(r"(^|/)(models|smoothing)/(cifar10|imagenet)/", p):
        return "normalize", ("the path looks like Cohen et al.'s models/<dataset>/<arch>/noise_X "
                             "layout, trained with NormalizeLayer")
    return None, ""


def choose_normalization(requested: str, checkpoint: Path) -> str:
    hint, why = path_hint(checkpoint)
    if requested == "auto":
        chosen = hint or "normalize"
        reason = why or ("no hint in the path; Cohen et al.'s default. SmoothAdv ImageNet and "
                         "most SmoothAdv CIFAR-10 models need --normalize center")
        info(f"normalization: {chosen} [{NORMALIZE_HELP[chosen]}], chosen because {reason}")
        return chosen
    info(f"normalization: {requested} [{NORMALIZE_HELP[requested]}] (--normalize)")
    if hint is not None and hint != requested:
        warn(f"--normalize {requested}, but {why}; the wrong input layer silently destroys "
             f"accuracy: check with --normalize {hint}")
    return requested


def resolve_arch(requested: str | None, extra: dict) -> Arch:
    stored = extra.get("arch") if isinstance(extra.get("arch"), str) else None
    name = requested or stored
    if name is None:
        raise ExportError("the checkpoint has no 'arch' entry; pass --arch "
                          f"({', '.join(SMOOTHING_ARCHS)})")
    if name not in SMOOTHING_ARCHS:
        raise ExportError(f"unknown architecture '{name}' (known: {', '.join(SMOOTHING_ARCHS)})")
    if requested and stored and requested != stored:
        warn(f"--arch {requested} overrides the checkpoint's own 'arch': {stored}")
    return SMOOTHING_ARCHS[name]


def output_width(state_dict: dict, arch: Arch) -> int:
    """Number of classes from the classifier's weight, so fine-tuned heads (e.g. ImageNet-32's
    1000 vs CIFAR's 10) need no flag; the architecture's default where the key is absent (the key
    check then reports it)."""
    for key, value in state_dict.items():
        if key.endswith("fc.weight") and value.ndim == 2:
            return int(value.shape[0])
    return arch.default_classes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("smoothing"),
        description="Export a Cohen/Salman randomized-smoothing checkpoint to a self-contained "
                    "ONNX model that takes [0,1] pixels, then check it against PyTorch.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pth.tar from the training code")
    parser.add_argument("--arch", help=f"override the checkpoint's 'arch' ({', '.join(SMOOTHING_ARCHS)})")
    parser.add_argument("--normalize", choices=("auto", "normalize", "center"), default="auto",
                        help="input layer used at training time: normalize = (x-mean)/std "
                             "(Cohen et al.), center = x-mean (SmoothAdv ImageNet and most "
                             "SmoothAdv CIFAR-10 models); auto (default) guesses from the path")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dict, extra = unwrap_checkpoint(
        load_checkpoint(args.checkpoint, args.trust_checkpoint), args.checkpoint)
    arch = resolve_arch(args.arch, extra)
    num_classes = output_width(state_dict, arch)
    net = arch.build(num_classes)
    fit_state_dict(net, state_dict, arch.prefix, arch.name)
    info(f"loaded {args.checkpoint}: {arch.name}, {num_classes} classes, "
         f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")

    kind = choose_normalization(args.normalize, args.checkpoint)
    pre = Preprocess(kind, 1.0, arch.mean, arch.std if kind == "normalize" else None)
    classes = read_classes(args.classes) if args.classes else arch.names_for(num_classes)
    sigma = resolve_sigma(args.sigma, args.checkpoint)
    out = args.out or Path(f"{arch.name}{'' if sigma is None else f'_noise_{sigma:g}'}.onnx")
    meta = base_metadata(arch.name, kind, num_classes, classes, sigma, args.checkpoint, pre)
    job = Job(WithPreprocess(net, pre, len(arch.input_shape) + 1), arch.input_shape, out, meta,
              fp16=args.fp16, opset=args.opset, parity_batch=args.parity_batch, seed=args.seed,
              force=args.force)
    return export_and_verify(job)


if __name__ == "__main__":
    sys.exit(run_cli(main))
