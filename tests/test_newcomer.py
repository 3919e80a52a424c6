"""A newcomer's papercuts (silent wrong results first), each fixed as the class of problem it stands for."""

from __future__ import annotations

import numpy as np
import pytest

import srtool
from cli_helpers import read, srtool as cli
from srtool.errors import UsageError

SAMPLE = srtool.shipped("fashion_mnist_sample.npz")


@pytest.mark.parametrize("count", [3, 4, 8])
def test_a_batch_of_grey_images_without_channels_is_never_read_as_one_colour_image(count):
    """Was: x[:3] of the N×H×W sample gave one certificate, three grey images read as one RGB one."""
    x = np.load(SAMPLE)["x"][:count]
    smooth = srtool.Smooth(srtool.shipped())
    with pytest.raises(UsageError, match=r"ambiguous .* C×H×W .* N×C×H×W") as refused:
        smooth.certify(x, n0=10, n=20)
    assert "\n" not in str(refused.value)
    certificates = smooth.certify(x[:, None], n0=10, n=20)  # the layout named: one certificate per image
    assert len(certificates.label) == count
    assert smooth.certify(x[:1], n0=10, n=20).n == 20  # 1×H×W is one grey image either way


def test_identical_patches_are_said(tmp_path, capsys):
    """Was: --patches 4 without --resize or a smaller patch cut four identical views, RS at 4× the cost,
    without a word. It is sound (so fuzzed plans keep it), and now said in one warning line."""
    code, _, err = cli("certify", "--patches", 4, "--max", 1, "--n0", 10, "--n", 20, "--quiet",
                       "--out", tmp_path / "r.parquet", capsys=capsys)
    assert code == 0 and "warning: --patches 4 cuts 4 identical 28×28 views" in err and "--resize R" in err
    with pytest.warns(UserWarning, match=r"^patches=4 cuts 4 identical .* resize=R"):
        srtool.Smooth(srtool.shipped(), patches=4).certify(np.load(SAMPLE)["x"][0][None], n0=10, n=20)
    code, _, err = cli("certify", "--patches", 4, "--resize", 32, "--max", 1, "--n0", 10, "--n", 20, "--quiet",
                       "--out", tmp_path / "s.parquet", capsys=capsys)
    assert code == 0 and "identical" not in err


def test_default_file_names_tell_datasets_apart(tmp_path, capsys, monkeypatch):
    """Was: a second run on another folder was refused as "a different configuration"."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.load(SAMPLE)["x"][:3], y=np.load(SAMPLE)["y"][:3])
    for images in ([], ["--images", other]):
        for command in ("certify", "predict"):
            selection = ["--n0", 10] if command == "certify" else []
            code, _, err = cli(command, *images, *selection, "--max", 2, "--n", 20, "--quiet", capsys=capsys)
            assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.parquet"))
    assert len(names) == 4
    assert sum("-other-" in name for name in names) == 2 and sum("-fashion_mnist_sample-" in name for name in names) == 2


def test_sequential_summaries_use_the_radii_asked_for(tmp_path, capsys):
    """Was: the summary showed @0.125/0.25/0.375/0.5 for --radii 0.12,0.25,0.5."""
    out = tmp_path / "s.parquet"
    code, stdout, err = cli("certify", "--sequential", "--radii", "0.12,0.25,0.5", "--n", 2000, "--max", 3,
                            "--out", out, capsys=capsys)
    assert code == 0, err
    header = next(line for line in stdout.splitlines() if "ACR" in line and "run" in line)
    assert "@0.12" in header and "@0.25" in header and "@0.5" in header and "@0.125" not in header
    code, stdout, _ = cli("report", out, capsys=capsys)
    assert "@0.12 " in stdout and "@0.375" not in stdout


@pytest.mark.parametrize("args, words", [
    (["certify", "--bogus"], "No such option '--bogus'"),
    (["certify", "--n", "abc"], "'abc' is not a valid integer"),
    (["report"], "Missing argument"),
    (["nosuch"], "No such command"),
])
def test_click_usage_errors_are_one_line(capsys, args, words):
    code, out, err = cli(*args, capsys=capsys)
    assert code == 2 and words in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Usage:" not in err and out == ""


# -- crashes and messages ---------------------------------------------------------------------------------

def test_python_inputs_that_crashed_are_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    smooth = srtool.Smooth(srtool.shipped())
    for call, words in [
        (lambda: smooth.certify(np.zeros((0, 1, 28, 28), np.uint8)), "holds no images"),
        (lambda: srtool.load_images(np.zeros((2, 28, 28))), "load_images takes a path"),
        (lambda: srtool.certify(images=["a.png", "b.png"]), "not file names"),
        (lambda: smooth.certify(np.zeros((1, 28, 28), np.uint8), n_samples=500), "did you mean n?"),
        (lambda: smooth.predict(np.zeros((1, 28, 28), np.uint8), num=500), "did you mean n?"),
        (lambda: srtool.certify(images=SAMPLE, num=500), "did you mean n?"),
        (lambda: srtool.Smooth(srtool.shipped(), diffusion=tmp_path / "missing.onnx"), "diffusion model not found"),
        (lambda: srtool.Smooth([srtool.shipped(), tmp_path / "gone.onnx"]), "ensemble member 2 not found"),
        (lambda: srtool.certify(images=np.zeros((28, 28, 3), np.uint8), out=tmp_path / "o.parquet"), "x[None]"),
    ]:
        with pytest.raises(UsageError, match=words) as refused:
            call()
        assert "\n" not in str(refused.value)
    grad = torch.zeros((1, 28, 28), requires_grad=True)  # a tensor that tracks gradients: detached, as numpy
    assert smooth.certify(grad, n0=10, n=20).n == 20


def test_certificates_index_like_cohens_tuple():
    cert = srtool.Smooth(srtool.shipped()).certify(np.load(SAMPLE)["x"][0][None], n0=10, n=30)
    assert (cert[0], cert[1]) == tuple(cert) == (cert.label, cert.radius) and len(cert) == 2


def test_messages_show_the_value_that_crossed(tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    (images / "empty.png").write_bytes(b"")
    import cv2
    cv2.imwrite(str(images / "fine.png"), np.full((28, 28), 200, np.uint8))
    out = tmp_path / "r.parquet"
    code, _, err = cli("certify", "--images", images, "--n0", 10, "--n", 20, "--quiet", "--out", out, capsys=capsys)
    assert code == 2
    assert read(out)[0].column("error").to_pylist() == ["unreadable: an empty file (0 bytes)", None]
    with pytest.raises(UsageError, match=r"from 1\.00000012 to 1\.00000012 lie outside"):
        srtool.Smooth(srtool.shipped()).certify(np.full((1, 28, 28), np.float32(1.0000001)), n0=10, n=20)


def test_outputs_say_what_they_hold(tmp_path, capsys):
    code, _, err = cli("certify", "--max", 2, "--n", 20, "--out", tmp_path / "r.csv", capsys=capsys)
    assert code == 2 and "writes Parquet" in err and not (tmp_path / "r.csv").exists()
    run = tmp_path / "s.parquet"
    assert cli("certify", "--sequential", "--n", 500, "--max", 2, "--quiet", "--out", run, capsys=capsys)[0] == 0
    code, stdout, _ = cli("show", run, capsys=capsys)
    assert " n " in stdout and "stop" in stdout
    code, stdout, err = cli("show", run, "--errors", capsys=capsys)
    assert "no errors" in stdout and "*" not in err
    import json
    code, stdout, _ = cli("show", run, "--format", "json", capsys=capsys)
    assert json.loads(stdout)[0]["input"] == 0
    code, stdout, _ = cli("bench", "--help", capsys=capsys)
    for option in ("--patches", "--patch-size", "--resize", "--sampling", "--reduce", "--noise-space", "--image-size"):
        described = stdout.split(option, 1)[1].split("\n  --", 1)[0]
        assert len(described.split()) > 3, option
