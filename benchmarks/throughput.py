"""Throughput of srtool's sampling pipeline against the bare ONNX Runtime model and a PyTorch
reference sampler written the way Cohen et al.'s `Smooth._sample_noise` works, in one process, on
the same model, batch and inputs; and peak memory against n.

    python benchmarks/throughput.py                      # shipped Fashion-MNIST CNN, CPU
    python benchmarks/throughput.py --seconds 6 --batch 1000 167
    python benchmarks/throughput.py --model cifar_resnet110 --batch 400 42

The PyTorch reference runs the torch module itself: for the shipped model the training module
(models/train_fashion_mnist.py's FashionCNN, same architecture and FLOPs as the ONNX file); for
`cifar_resnet110` Cohen et al.'s CIFAR ResNet-110 with random weights (weights do not change
speed), which exporters.smoothing exports to the ONNX file srtool runs. Smooth-Reduce is the
paper's CIFAR plan: 28→32 or 32→36, four corner crops at the model's size, mean. Needs the dev
extra (torch). Prints a markdown block to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srtool import bench as srtool_bench  # noqa: E402
from srtool.model import load_model  # noqa: E402
from srtool.plan import Plan  # noqa: E402

MODEL = ROOT / "srtool" / "assets" / "fmnist_cnn_sigma0.25.onnx"
SAMPLE = ROOT / "srtool" / "assets" / "fashion_mnist_sample.npz"


def torch_reference_rate(module, shape: tuple[int, int, int], resized: int, batch: int, patches: int,
                         seconds: float, threads: int, sigma: float = 0.25) -> float:
    """Noisy copies per second of a Cohen-style sampler: repeat, randn_like, forward, argmax, count."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    x = torch.rand(1, *shape)
    side, edge = shape[-1], resized - shape[-1]

    def sample() -> None:
        with torch.inference_mode():
            copies = x.repeat((batch, 1, 1, 1))
            noisy = copies + torch.randn_like(copies) * sigma
            if patches == 1:
                logits = module(noisy)
            else:  # the paper's CIFAR plan: resize, four corner crops at the model's size, mean
                big = F.interpolate(noisy, size=(resized, resized), mode="bilinear", align_corners=False)
                views = torch.cat([big[:, :, t:t + side, l:l + side] for t in (0, edge) for l in (0, edge)])
                logits = module(views).view(4, batch, -1).mean(0)
            np.bincount(logits.argmax(1).numpy(), minlength=logits.shape[1])

    return srtool_bench.rate(sample, batch, seconds)


def fmnist_case(folder: Path):
    """The shipped model and its training module."""
    from models.train_fashion_mnist import FashionCNN

    return MODEL, FashionCNN().eval(), (1, 28, 28), 32, (64, 100, 167, 250, 400, 1000)


def cifar_resnet110_case(folder: Path):
    """Cohen et al.'s CIFAR ResNet-110 with random weights, exported by exporters.smoothing."""
    import torch

    from exporters import smoothing
    from exporters.archs import SMOOTHING_ARCHS

    arch = SMOOTHING_ARCHS["cifar_resnet110"]
    net = arch.build(10).eval()
    checkpoint = folder / "checkpoint.pth.tar"
    torch.save({"arch": arch.name, "state_dict": {arch.prefix + k: v for k, v in net.state_dict().items()}},
               checkpoint)
    onnx_path = folder / "cifar_resnet110.onnx"
    if smoothing.main([str(checkpoint), "--arch", arch.name, "--normalize", "normalize", "-o", str(onnx_path)]):
        raise SystemExit("export failed")
    return onnx_path, net, (3, 32, 32), 36, (16, 32, 64, 128)


CASES = {"fmnist": fmnist_case, "cifar_resnet110": cifar_resnet110_case}


def peak_rss_mb(n: int, batch: str) -> float:
    """Peak resident memory (VmHWM) of a whole `srtool certify` process on one input with n copies.

    The child reports its own high-water mark at exit: a fork's ru_maxrss would include this
    (torch-laden) parent's memory, VmHWM starts afresh with the new program.
    """
    import tempfile

    report = ("import atexit, sys\n"
              "atexit.register(lambda: print(next(l for l in open('/proc/self/status') "
              "if l.startswith('VmHWM')), file=sys.stderr))\n"
              "from srtool.cli import main\nmain(sys.argv[1:])")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-c", report, "certify", "--model", str(MODEL), "--images", str(SAMPLE),
             "--max", "1", "--n", str(n), "--batch", batch, "--out", f"{tmp}/r.parquet", "--quiet"],
            cwd=ROOT, capture_output=True, text=True, check=True)
    kilobytes = int(result.stderr.split("VmHWM:")[1].split()[0])
    return kilobytes / 1024


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CASES), default="fmnist")
    parser.add_argument("--batch", type=int, nargs="+", default=[1000, 167],
                        help="noisy copies per call (167 is what --batch auto picks for fmnist on a CPU)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # the case: ONNX file, torch module, input shape, Smooth-Reduce resize, batches to sweep PyTorch over
        onnx_path, module, shape, resized, torch_batches = CASES[args.model](Path(tmp))
        model = load_model(onnx_path)
        rows = []
        for batch in args.batch:
            for patches in (1, 4):
                if patches == 1:
                    plan = Plan(shape, shape[1:], shape[1:])
                else:
                    plan = Plan(shape, shape[1:], (resized, resized), patches=4)
                result = srtool_bench.run(model, plan, 10, batch, "cpu", args.threads, args.seconds)
                reference = torch_reference_rate(module, shape, resized, batch, patches, args.seconds, args.threads)
                rows.append((patches, result, reference))

        # The PyTorch reference at its best batch too: on a CPU it is fastest well below 1000.
        torch_best = {patches: max((torch_reference_rate(module, shape, resized, batch, patches, 1.0,
                                                         args.threads) * patches, batch)
                                   for batch in torch_batches) for patches in (1, 4)}
    memory = ({(batch, n): peak_rss_mb(n, batch) for batch in ("auto", "1000") for n in (1_000, 10_000, 100_000)}
              if args.model == "fmnist" else {})

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}; "
          f"`python benchmarks/throughput.py --model {args.model} --batch {' '.join(map(str, args.batch))} "
          f"--seconds {args.seconds} --threads {args.threads}`\n")
    print("| plan | batch | bare ORT model (fwd/s) | srtool pipeline (fwd/s) | pipeline / model | "
          "PyTorch reference (fwd/s) | srtool / PyTorch | s per input at n=100k |")
    print("|---|---|---|---|---|---|---|---|")
    for patches, result, reference in rows:
        side = shape[-1]
        name = "RS" if patches == 1 else f"Smooth-Mean k=4 ({side}→{resized}, four {side}×{side} crops)"
        torch_forward = reference * patches
        print(f"| {name} | {result['batch']} | {result['raw_forward_per_s']:,.0f} | "
              f"{result['pipeline_forward_per_s']:,.0f} | "
              f"{result['ratio']:.2f} | {torch_forward:,.0f} | "
              f"{result['pipeline_forward_per_s'] / torch_forward:.2f} | "
              f"{result['projected_s_per_input_n100k']:.1f} |")
    for patches, (forward, batch) in torch_best.items():
        print(f"\nPyTorch reference at its best batch (of {', '.join(map(str, torch_batches))}), k={patches}: {forward:,.0f} forward "
              f"passes/s at batch {batch}")
    for (batch, n), megabytes in memory.items():
        print(f"Peak RSS of `srtool certify --batch {batch}` on one input, n={n:,}: {megabytes:.0f} MB")
    print(json.dumps({"rows": [{"patches": p, **r, "torch_copies_per_s": t} for p, r, t in rows],
                      "torch_best": {p: {"forward_per_s": f, "batch": b} for p, (f, b) in torch_best.items()},
                      "peak_rss_mb": {f"{b} {n}": m for (b, n), m in memory.items()}}, indent=1))


if __name__ == "__main__":
    main()
