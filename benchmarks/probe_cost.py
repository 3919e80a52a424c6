"""The per-copy probe's cost at load (srtool/per_copy.py): seconds, ONNX Runtime calls and copies, and
the largest change of a copy's output it saw (a share of the outputs' scale), for the shipped model,
the shipped DDPM pair and, given their paths, a ResNet-50 and an ADM-sized UNet (random weights:
benchmarks/dds_fullsize.py makes both).

    python benchmarks/probe_cost.py [--classifier resnet50.onnx --unet adm.onnx]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime  # noqa: E402

from srtool import core, per_copy  # noqa: E402
from srtool.denoise import denoising_for, load_denoiser  # noqa: E402
from srtool.model import load_model  # noqa: E402

calls: list[int] = []
_run = onnxruntime.InferenceSession.run


def _counting_run(self, names, feeds, *args):
    calls.append(len(next(iter(feeds.values()))))
    return _run(self, names, feeds, *args)


def measured(what: str, check) -> str:
    calls.clear()
    start = time.perf_counter()
    deviation = check()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (f"| {what} | {len(calls)} / {sum(calls)} | {deviation:.1e} | {seconds:.2f} | {peak:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="a 3×224×224 classifier, e.g. a ResNet-50")
    parser.add_argument("--unet", help="an ε-prediction UNet at 256×256, e.g. ADM's")
    parser.add_argument("--sigma", type=float, default=0.5)
    args = parser.parse_args()
    onnxruntime.InferenceSession.run = _counting_run
    rows = ["| model | calls / copies | largest change ÷ scale | seconds (session included) | peak RSS GB so far |",
            "|---|---|---|---|---|"]
    shipped = load_model(core.asset(core.DEFAULT_MODEL))
    rows.append(measured("shipped CNN 1×28×28", lambda: per_copy.check_classifier(shipped, (1, 28, 28))))
    clean = load_model(core.asset(core.DEFAULT_CLEAN_MODEL))
    ddpm = denoising_for(load_denoiser(core.asset(core.DEFAULT_DIFFUSION), "diffusion"), 0.25, None, (1, 28, 28))
    rows.append(measured("shipped DDPM (26 M MACs)", lambda: per_copy.check_denoiser(ddpm, (1, 28, 28))))
    rows.append(measured("shipped clean CNN behind it", lambda: per_copy.check_classifier(clean, (1, 28, 28))))
    if args.classifier:
        resnet = load_model(args.classifier)
        rows.append(measured(f"{Path(args.classifier).name} 3×224×224",
                             lambda: per_copy.check_classifier(resnet, (3, 224, 224))))
    if args.unet:
        start = time.perf_counter()
        unet = load_denoiser(args.unet, "diffusion")
        stage = denoising_for(unet, args.sigma, None, (3, 256, 256))
        rows.append(f"| ({Path(args.unet).name} read in {time.perf_counter() - start:.1f} s) | | | | |")
        rows.append(measured(f"{Path(args.unet).name} 3×256×256, t={stage.timestep}",
                             lambda: per_copy.check_denoiser(stage, (3, 256, 256))))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
