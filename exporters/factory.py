"""Export any PyTorch classifier to ONNX for srtool, given a function that builds it.

    python -m exporters.factory --factory mypackage.nets:make_net --kwargs '{"width": 2}' \\
        --checkpoint runs/best.pt --input-shape 3,32,32 \\
        --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 -o mynet.onnx

`--factory` is `package.module:callable` (importable from the current directory) or
`path/to/file.py:callable`, where the callable may be `Class.method`; it must return an
nn.Module mapping N×C×H×W (or N×C×T×H×W) to N×classes logits. If the network expects normalized
input, give --mean/--std (and --scale 255 for networks fed 0-255 pixels): srtool feeds [0,1]
pixels, so the normalization goes inside the graph. srtool.arch records a file by its name only.
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

import torch
from torch import nn

from exporters.common import (ExportError, Job, Preprocess, WithPreprocess, add_common_arguments,
                              base_metadata, export_and_verify, fit_state_dict, import_factory,
                              factory_name, info, load_checkpoint, parse_floats, parse_shape,
                              read_classes, resolve_sigma, run_cli, unwrap_checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporters.factory",
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
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_shape = parse_shape(args.input_shape)
    channels = input_shape[0]
    mean = parse_floats(args.mean, "--mean", channels) if args.mean else None
    std = parse_floats(args.std, "--std", channels) if args.std else None
    if std is not None and mean is None:
        raise ExportError("--std needs --mean (pass zeros for a division only)")
    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError
    except ValueError:
        raise ExportError(f"--kwargs must be a JSON object, got '{args.kwargs}'") from None

    factory = import_factory(args.factory)
    try:
        net = factory(**kwargs)
    except Exception as exc:
        raise ExportError(f"--factory {args.factory} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ExportError(f"--factory {args.factory} returned a {type(net).__name__}, not an nn.Module")
    if args.checkpoint:
        state_dict, _ = unwrap_checkpoint(
            load_checkpoint(args.checkpoint, args.trust_checkpoint), args.checkpoint)
        fit_state_dict(net, state_dict, args.prefix, args.factory)
        info(f"loaded {args.checkpoint} into {args.factory}")
    net.eval()

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


if __name__ == "__main__":
    sys.exit(run_cli(main))
