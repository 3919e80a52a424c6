"""srtool's CUDA path on a real GPU: IO binding, votes-only transfers, --noise device (issue 15).

Every test here is skipped unless ONNX Runtime offers the CUDAExecutionProvider *and* the machine has
an NVIDIA driver (srtool.engine.gpu_present): the onnxruntime-gpu wheel lists the provider on
CPU-only machines too. benchmarks/gpu.py runs this file on a GPU machine and collects the numbers
the tests print (the vote differences between CPU and CUDA) through SRTOOL_CUDA_REPORT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from cli_helpers import read, srtool

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "srtool" / "assets"
MODEL = ASSETS / "fmnist_cnn_sigma0.25.onnx"
SAMPLE = ASSETS / "fashion_mnist_sample.npz"
SIGMA = 0.25
CLASSES = 10


def _cuda_ready() -> tuple[bool, str]:
    try:
        import onnxruntime as ort

        from srtool.engine import gpu_present
    except Exception as error:  # noqa: BLE001 - any import failure means: nothing to test here
        return False, f"onnxruntime or srtool cannot be imported: {error}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "ONNX Runtime has no CUDAExecutionProvider (a CPU-only build)"
    if not gpu_present():
        return False, "no NVIDIA GPU or driver on this machine"
    return True, ""


READY, WHY = _cuda_ready()
pytestmark = pytest.mark.skipif(not READY, reason=WHY)


def report(key: str, value) -> None:
    """Print a measurement, and add it to the JSON file SRTOOL_CUDA_REPORT names (benchmarks/gpu.py)."""
    print(f"{key}: {json.dumps(value)}")
    path = os.environ.get("SRTOOL_CUDA_REPORT")
    if path:
        data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        data[key] = value
        Path(path).write_text(json.dumps(data, indent=1))


def certify(tmp_path, name: str, *options, capsys):
    out = tmp_path / f"{name}.parquet"
    code, _, err = srtool("certify", "--model", MODEL, "--images", SAMPLE, "--out", out, "--quiet", *options,
                          capsys=capsys)
    assert code == 0, err
    assert "could not use CUDA" not in err
    return read(out)


def check_table(table, config, inputs: int, n: int) -> list[dict]:
    """A valid CERTIFY table: all n votes counted, and prediction, count, bound and radius consistent."""
    rows = table.to_pylist()
    assert len(rows) == inputs
    for row in rows:
        assert row.get("error") is None, row
        counts = np.asarray(row["counts"])
        assert counts.shape == (CLASSES,) and (counts >= 0).all()
        assert counts.sum() == n == row["n"]
        assert -1 <= row["predict"] < CLASSES
        assert 0 <= row["count"] <= n and row["count"] in counts
        assert 0.0 <= row["p_lower"] <= 1.0
        if row["predict"] == -1:
            assert row["radius"] == 0 and row["p_lower"] <= 0.5
        else:
            assert row["count"] == counts[row["predict"]]
            assert row["p_lower"] > 0.5
            expected = config["sigma"] * norm.ppf(row["p_lower"]) * config.get("radius_factor", 1.0)
            assert row["radius"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    return rows


def test_certify_on_cuda_with_io_binding(tmp_path, capsys):
    # batch 128 with n0=50, n=500 and two sampling loops: full calls and shrinking last calls, so
    # several batch shapes, each with its own bound device buffers.
    table, config = certify(tmp_path, "bound", "--device", "cuda", "--max", 8, "--n0", 50, "--n", 500,
                            "--batch", 128, capsys=capsys)
    assert config["device"] == "cuda"
    assert config["noise"] == "host"
    rows = check_table(table, config, 8, 500)
    assert sum(r["correct"] for r in rows) >= 5  # the shipped model: about 89% smoothed accuracy


def test_certify_on_cuda_with_device_noise(tmp_path, capsys):
    options = ("--device", "cuda", "--noise", "device", "--max", 16, "--n0", 50, "--n", 1000, "--batch", 250)
    table, config = certify(tmp_path, "device", *options, capsys=capsys)
    assert config["device"] == "cuda"
    assert config["noise"] == "device"
    rows = check_table(table, config, 16, 1000)
    # reproducible per run from its seed
    again, _ = certify(tmp_path, "device-again", *options, capsys=capsys)
    same = [a["counts"] == b["counts"] for a, b in zip(rows, again.to_pylist())]
    report("device_noise_same_seed_same_counts", f"{sum(same)}/{len(same)}")
    assert all(same)
    # the in-graph noise has the host noise's distribution: the vote shares agree within sampling error
    host, _ = certify(tmp_path, "host", "--device", "cuda", "--max", 16, "--n0", 50, "--n", 1000, "--batch", 250,
                      capsys=capsys)
    distances = [0.5 * np.abs(np.asarray(a["counts"]) - np.asarray(b["counts"])).sum() / 1000
                 for a, b in zip(rows, host.to_pylist())]
    report("device_vs_host_noise_vote_share_distance", {"mean": float(np.mean(distances)),
                                                        "max": float(np.max(distances))})
    assert np.mean(distances) < 0.1 and np.max(distances) < 0.25


def test_consensus_ensemble_on_cuda_counts_escalated_copies(tmp_path, capsys):
    """Under IO binding the consensus graph's escalated count is bound beside the votes: the same
    votes and the same escalated copies as the CPU, input by input (up to float differences)."""
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"ens-{device}.parquet"
        code, _, err = srtool("certify", "--ensemble", "--consensus", 2, "--images", SAMPLE, "--max", 6, "--n0", 50,
                              "--n", 500, "--batch", 128, "--device", device, "--out", out, "--quiet", capsys=capsys)
        assert code == 0, err
        tables[device] = read(out)
    assert tables["cuda"][1]["device"] == "cuda"
    cpu_rows, cuda_rows = tables["cpu"][0].to_pylist(), tables["cuda"][0].to_pylist()
    assert all(r["escalated"] is not None for r in cuda_rows)
    report("consensus_escalated_cpu_vs_cuda", [[a["escalated"], b["escalated"]] for a, b in zip(cpu_rows, cuda_rows)])
    assert sum(r["escalated"] for r in cuda_rows) == pytest.approx(sum(r["escalated"] for r in cpu_rows), rel=0.1,
                                                                  abs=5)


def test_host_noise_counts_on_cuda_equal_the_cpu(tmp_path, capsys):
    options = ("--max", 20, "--n0", 100, "--n", 1000, "--batch", 200, "--seed", 7)
    cpu, _ = certify(tmp_path, "cpu", "--device", "cpu", *options, capsys=capsys)
    cuda, config = certify(tmp_path, "cuda", "--device", "cuda", *options, capsys=capsys)
    assert config["device"] == "cuda"
    cpu_rows, cuda_rows = cpu.to_pylist(), cuda.to_pylist()
    # votes that moved between classes, at least: half the L1 distance of the count vectors
    moved = [int(np.abs(np.asarray(a["counts"]) - np.asarray(b["counts"])).sum()) // 2
             for a, b in zip(cpu_rows, cuda_rows)]
    total = 1000 * len(cpu_rows)
    equal = 1 - sum(moved) / total
    report("host_noise_cpu_vs_cuda", {"votes": total, "votes_moved": sum(moved), "equal_fraction": equal,
                                      "inputs_with_other_counts": sum(m > 0 for m in moved),
                                      "predictions_differ": sum(a["predict"] != b["predict"]
                                                                for a, b in zip(cpu_rows, cuda_rows))})
    assert equal >= 0.99


def test_model_votes_on_cuda_equal_the_cpu_copy_by_copy():
    """The bare model on both providers, on the same noisy copies: the exact share of equal votes."""
    import onnxruntime as ort

    x = np.load(SAMPLE)["x"][:8].astype(np.float32)[:, None] / 255
    rng = np.random.default_rng(0)
    noisy = (np.repeat(x, 512, axis=0) + SIGMA * rng.standard_normal((8 * 512, 1, 28, 28))).astype(np.float32)
    votes = {}
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        session = ort.InferenceSession(str(MODEL), providers=[provider])
        assert session.get_providers()[0] == provider
        name = session.get_inputs()[0].name
        votes[provider] = np.concatenate([session.run(None, {name: noisy[i:i + 1024]})[0].argmax(1)
                                          for i in range(0, len(noisy), 1024)])
    differ = int((votes["CPUExecutionProvider"] != votes["CUDAExecutionProvider"]).sum())
    report("model_votes_cpu_vs_cuda", {"copies": len(noisy), "differ": differ})
    assert 1 - differ / len(noisy) >= 0.99


def test_device_cuda_is_used_and_does_not_fail(tmp_path, capsys):
    code, out, err = srtool("bench", "--device", "cuda", "--batch", 256, "--seconds", 0.2, "--json", capsys=capsys)
    assert code == 0, err
    assert "could not use CUDA" not in err
    result = json.loads(out[out.index("{"):])
    assert result["provider"] == "cuda"
    report("bench_fmnist_cuda_batch256", {k: result.get(k) for k in ("raw_forward_per_s", "pipeline_forward_per_s",
                                                                     "ratio")})
    # --device auto takes the GPU where there is one
    _, config = certify(tmp_path, "auto", "--device", "auto", "--max", 2, "--n0", 20, "--n", 100, capsys=capsys)
    assert config["device"] == "cuda"


# ---- the denoiser stage (one-shot diffusion denoising) on CUDA -------------------------------------
# The shipped Fashion-MNIST DDPM (a small UNet: GroupNorm, attention, timestep embedding) in front of
# the shipped clean classifier: `srtool certify --diffusion` with no file runs exactly that pair.
DDPM = ASSETS / "fmnist_ddpm.onnx"


def test_diffusion_votes_on_cuda_equal_the_cpu(tmp_path, capsys):
    """Host noise from the same seed, UNet then classifier on each provider: the same votes (≥ 99%)."""
    options = ("--diffusion", "--max", 8, "--n0", 50, "--n", 500, "--batch", 100, "--seed", 3)
    cpu, _ = certify(tmp_path, "ddpm-cpu", "--device", "cpu", *options, capsys=capsys)
    cuda, config = certify(tmp_path, "ddpm-cuda", "--device", "cuda", *options, capsys=capsys)
    assert config["device"] == "cuda"
    cpu_rows, cuda_rows = cpu.to_pylist(), cuda.to_pylist()
    assert len(cpu_rows) == len(cuda_rows) == 8
    for rows in (cpu_rows, cuda_rows):
        assert all(r.get("error") is None and sum(r["counts"]) == r["n"] == 500 for r in rows)
    moved = [int(np.abs(np.asarray(a["counts"]) - np.asarray(b["counts"])).sum()) // 2
             for a, b in zip(cpu_rows, cuda_rows)]
    equal = 1 - sum(moved) / (500 * len(cpu_rows))
    report("diffusion_host_noise_cpu_vs_cuda", {"votes": 500 * len(cpu_rows), "votes_moved": sum(moved),
                                                "equal_fraction": equal,
                                                "predictions_differ": sum(a["predict"] != b["predict"]
                                                                          for a, b in zip(cpu_rows, cuda_rows))})
    assert equal >= 0.99


def test_diffusion_unet_on_cuda_matches_the_cpu():
    """The bare UNet on both providers, same inputs at a one-shot step: ε agrees to float precision
    (TF32 convolutions on Ampere and later stay near 1e-3 of the output's scale)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    eps = {}
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        session = ort.InferenceSession(str(DDPM), providers=[provider])
        assert session.get_providers()[0] == provider
        x_input, t_input = session.get_inputs()
        shape = [64 if not isinstance(d, int) else d for d in x_input.shape]
        if provider == "CPUExecutionProvider":
            feeds = {x_input.name: rng.standard_normal(shape).astype(np.float32),
                     t_input.name: np.full(shape[0], 200.0, np.float32)}
        eps[provider] = session.run(None, feeds)[0]
    cpu, cuda = eps["CPUExecutionProvider"], eps["CUDAExecutionProvider"]
    relative = float(np.abs(cpu - cuda).max() / np.abs(cpu).max())
    report("diffusion_unet_cpu_vs_cuda_max_relative_diff", relative)
    assert np.isfinite(cuda).all() and relative < 1e-2


def test_bench_with_diffusion_on_cuda(capsys):
    code, out, err = srtool("bench", "--diffusion", "--device", "cuda", "--batch", 256, "--seconds", 0.3, "--json",
                            capsys=capsys)
    assert code == 0, err
    assert "could not use CUDA" not in err
    result = json.loads(out[out.index("{"):])
    assert result["provider"] == "cuda"
    assert result["denoiser_copies_per_s"] > 0 and result["pipeline_copies_per_s"] > 0
    report("bench_fmnist_ddpm_cuda_batch256", {k: result.get(k) for k in (
        "denoiser_copies_per_s", "raw_forward_per_s", "bare_composed_copies_per_s", "pipeline_copies_per_s", "ratio")})
