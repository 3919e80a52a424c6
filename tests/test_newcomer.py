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
