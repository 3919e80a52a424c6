"""Export a MARS RGB-stream 3-D ResNeXt-101 checkpoint (craston/MARS) to ONNX.

    python -m exporters.mars trained_models/UCF101/RGB_UCF101_16f.pth --classes classInd.txt \\
        -o mars.onnx

MARS reads clips as 0-255 pixels minus the ActivityNet mean [114.7748, 107.7354, 99.4750] (no
division), 16x112x112. srtool feeds [0,1] pixels (sigma is defined there), so the x255 and the
mean subtraction are baked into the graph: the exported model takes float32 N×3×16×112×112 in [0,1].
The checkpoint is {'epoch', 'arch': 'resnext-101', 'state_dict' (keys 'module.*'), 'optimizer'};
the number of classes (the original's --n_classes) is read from the classifier weight.
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

from exporters.archs import mars_arch
from exporters.common import (ExportError, Job, Preprocess, WithPreprocess, add_common_arguments,
                              base_metadata, export_and_verify, fit_state_dict, info,
                              load_checkpoint, read_classes, resolve_sigma, run_cli,
                              program_name, unwrap_checkpoint, warn)

MARS_ARCH = "resnext-101"  # the 'arch' string MARS' training scripts store ('{model}-{depth}')


def frames_from_name(path: Path) -> int | None:
    """MARS names its models stream_dataset_<T>f.pth (e.g. RGB_Kinetics_16f.pth)."""
    match = re.search(r"_(\d+)f\.pth", path.name)
    return int(match.group(1)) if match else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("mars"),
        description="Export a MARS RGB 3-D ResNeXt-101 checkpoint to a self-contained ONNX model "
                    "that takes [0,1] float clips N×3×T×112×112, then check it against PyTorch.")
    parser.add_argument("checkpoint", type=Path, help="e.g. RGB_UCF101_16f.pth or MARS_UCF101_16f.pth")
    parser.add_argument("--frames", type=int,
                        help="clip length T (default: from '<T>f' in the file name, else 16)")
    parser.add_argument("--size", type=int, default=112, help="frame height and width (default 112)")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dict, extra = unwrap_checkpoint(
        load_checkpoint(args.checkpoint, args.trust_checkpoint), args.checkpoint)
    stored = extra.get("arch")
    if isinstance(stored, str) and stored != MARS_ARCH:
        warn(f"checkpoint 'arch' is '{stored}', MARS RGB models store '{MARS_ARCH}'")

    stem = next((v for k, v in state_dict.items() if k.endswith("conv1.weight") and v.ndim == 5
                 and "layer" not in k), None)
    if stem is not None and stem.shape[1] != 3:
        raise ExportError(f"the checkpoint's first convolution takes {stem.shape[1]} channels: a "
                          f"Flow-stream model; only RGB and MARS streams take video frames")
    fc = next((v for k, v in state_dict.items() if k.endswith("fc.weight") and v.ndim == 2), None)
    frames = args.frames or frames_from_name(args.checkpoint) or 16
    arch = mars_arch(frames, args.size)
    num_classes = int(fc.shape[0]) if fc is not None else arch.default_classes
    net = arch.build(num_classes)
    fit_state_dict(net, state_dict, arch.prefix, f"MARS ResNeXt-101 ({num_classes} classes)")
    info(f"loaded {args.checkpoint}: 3-D ResNeXt-101, {num_classes} classes, clips of {frames}x"
         f"{args.size}x{args.size}, {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters")

    pre = Preprocess("scale255_center", 255.0, arch.mean, None)
    info(f"normalization: {pre.describe()} (MARS: 0-255 pixels minus the ActivityNet mean)")
    classes = read_classes(args.classes) if args.classes else None
    sigma = resolve_sigma(args.sigma, args.checkpoint)
    out = args.out or Path(f"mars_resnext101_{frames}f.onnx")
    meta = base_metadata("mars_resnext101", pre.kind, num_classes, classes, sigma,
                         args.checkpoint, pre)
    job = Job(WithPreprocess(net, pre, 5), arch.input_shape, out, meta, fp16=args.fp16,
              opset=args.opset, parity_batch=args.parity_batch, seed=args.seed, force=args.force)
    return export_and_verify(job)


if __name__ == "__main__":
    sys.exit(run_cli(main))
