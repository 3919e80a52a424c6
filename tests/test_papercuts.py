"""A notebook user's papercuts (issue 25, items 9–20): numpy numbers and whole numbers, keyword
spelling of messages, arrays as datasets, Results metrics that say why, σ warnings, the largest
radius n and α allow, grey images on RGB models, report names, plots and markup, bench figures that
agree, video output, compact reprs and the exporters' class names and factory specs.

Each test checks a class of problem over generated cases where one fits (every numpy integer type,
every integer option, every error the API raises for a bad option)."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

import srtool
from srtool import core
from srtool.api import in_python_spelling
from srtool.errors import UsageError
from cli_helpers import read, srtool as cli

MODEL_SIGMA = 0.25  # prototype_run's model declares srtool.sigma 0.25


@pytest.fixture
def linear(prototype_run):
    return prototype_run(6)


def without(table, *columns):
    return table.drop(["time_s", *columns]).to_pylist()


def assert_one_keyword_spelled_line(message: str) -> None:
    """One line, and no `--flag` but inside a shell command it quotes ("srtool show RUN --errors")."""
    assert message and "\n" not in message, message
    assert "--" not in re.sub(r"srtool [a-z]+[^;()]*", "", message), message


# -- 9. numpy integers wherever an int is accepted ------------------------------------------------------

@pytest.mark.parametrize("kind", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64])
def test_numpy_integers_give_the_same_numbers_as_python_ints(linear, kind):
    model, data = linear
    x = np.load(data)["x"][:3, None]
    with srtool.Smooth(model, sigma=np.float32(0.25), seed=kind(3), patches=kind(1), threads=kind(1)) as smooth:
        plain = smooth.certify(x, n0=20, n=120, batch=32, index=2)
        numpy = smooth.certify(x, n0=kind(20), n=kind(120), batch=kind(32), index=kind(2))
        assert numpy.counts.tolist() == plain.counts.tolist() and numpy.radius.tolist() == plain.radius.tolist()
        one = smooth.predict(x[0], n=kind(100), index=kind(1))
        assert one.counts.tolist() == smooth.predict(x[0], n=100, index=1).counts.tolist()
        assert type(one.n) is int  # a plain int comes back, whatever went in


def test_numpy_numbers_reach_the_results_metadata_as_plain_json(tmp_path, linear):
    model, data = linear
    plain = srtool.certify(model, images=data, n0=10, n=80, max=4, seed=1, out=tmp_path / "plain.parquet")
    numpy = srtool.certify(model, images=data, n0=np.int32(10), n=np.int64(80), max=np.int64(4), seed=np.uint8(1),
                           skip=np.int16(1), sigma=np.float32(0.25), alpha=np.float64(0.001), threads=np.int64(1),
                           out=tmp_path / "numpy.parquet")
    assert without(numpy.table) == without(plain.table)
    _, config = read(tmp_path / "numpy.parquet")
    assert (config["n"], config["n0"], config["max"], config["seed"]) == (80, 10, 4, 1)
    assert type(config["alpha"]) is float and (config["alpha"], config["sigma"]) == (0.001, 0.25)


def test_path_objects_reach_the_results_metadata_as_text(tmp_path, make_linear):
    import cv2

    model = make_linear(np.ones((16, 2)), np.zeros(2), (1, 4, 4), metadata={"srtool.sigma": 0.25})
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((4, 4), 9, np.uint8))
    (tmp_path / "labels.csv").write_text("a.png,1\n")
    results = srtool.certify(Path(model), images=folder, labels=tmp_path / "labels.csv", n0=10, n=50,
                             out=tmp_path / "r.parquet")
    assert read(tmp_path / "r.parquet")[1]["labels"] == str(tmp_path / "labels.csv")
    assert results.table.column("label").to_pylist() == [1]


# -- 10. "must be a whole number" -----------------------------------------------------------------------

INTEGER_OPTIONS = ["n", "n0", "seed", "patches", "patch_size", "resize", "image_size", "batch", "threads", "skip",
                   "max"]


@pytest.mark.parametrize("option", INTEGER_OPTIONS)
@pytest.mark.parametrize("value", [1000.0, "1000", 2.5, True])
def test_a_count_that_is_not_a_whole_number_says_so(tmp_path, linear, option, value):
    model, data = linear
    out = tmp_path / "r.parquet"
    with pytest.raises(UsageError) as raised:
        srtool.certify(model, images=data, out=out, **{option: value})
    kind = "a positive integer or 'auto'" if option == "batch" else "a whole number"
    assert str(raised.value) == f"{option} must be {kind}, not {value!r}"
    assert not out.exists() and not Path(f"{out}.parts").exists()


def test_smooth_says_whole_number_too(linear):
    model, data = linear
    smooth = srtool.Smooth(model)
    x = np.load(data)["x"][0][None]
    for keywords, message in [({"n": 1000.0}, "n must be a whole number, not 1000.0"),
                              ({"n0": "100"}, "n0 must be a whole number, not '100'"),
                              ({"index": 1.0}, "index must be a whole number, not 1.0"),
                              ({"batch": 8.0}, "batch must be a positive integer or 'auto', not 8.0")]:
        with pytest.raises(UsageError) as raised:
            smooth.certify(x, **keywords)
        assert str(raised.value) == message
    with pytest.raises(UsageError, match="^patches must be a whole number, not 4.0$"):
        srtool.Smooth(model, patches=4.0)


# -- 13. Python callers see keyword names ---------------------------------------------------------------

@pytest.mark.parametrize("message, spelled", [
    ("--n must be at least 1", "n must be at least 1"),
    ("try --alpha 1e-3 or --n 1,000.", "try alpha=1e-3 or n=1,000."),
    ("images are 32×32 but the model takes 28×28; pass --image-size 28 to resize on load, or "
     "--patch-size/--patches to crop",
     "images are 32×32 but the model takes 28×28; pass image_size=28 to resize on load, or "
     "patch_size=/patches= to crop"),
    ("r.parquet holds a run with a different configuration (n); use --overwrite or another --out",
     "r.parquet holds a run with a different configuration (n); use overwrite=True or another out="),
    ("--noise device needs --device cuda: use --noise host", 'noise="device" needs device="cuda": use noise="host"'),
    ("--address, --workers: for --engine ray only", 'address, workers: for engine="ray" only'),
    ("--consensus K needs an ensemble of more than K models", "consensus=K needs an ensemble of more than K models"),
    ("the sequential budget (--n) must be a whole number", "the sequential budget (n) must be a whole number"),
    ("--subvideo 12 must be a multiple of the chunk", "subvideo=12 must be a multiple of the chunk"),
    ("m.onnx does not declare its input size; pass --patch-size", "m.onnx does not declare its input size; pass patch_size="),
    ("runs/a--b.parquet is damaged", "runs/a--b.parquet is damaged"),  # not an option: left alone
    ("--radii applies to --sequential runs (srtool report takes its own --radii)",
     "radii applies to sequential=True runs (srtool report takes its own --radii)"),  # a shell command stays
    ("2 error rows (srtool show r.parquet --errors)", "2 error rows (srtool show r.parquet --errors)"),
    ("--labels and --split apply to folders of videos", "labels and split apply to folders of videos"),
    ("--noise-space for videos must be one of input, patch", "noise_space for videos must be one of input, patch"),
])
def test_messages_in_python_spelling(message, spelled):
    assert in_python_spelling(message) == spelled


BAD_VALUES = {"sigma": -1.0, "alpha": 2.0, "n": 0, "n0": -3, "seed": -1, "patches": 0, "patch_size": 0, "resize": -2,
              "sampling": "grid", "reduce": "median", "noise_space": "output", "image_size": 0, "batch": 0,
              "device": "tpu", "noise": "pink", "threads": -1, "engine": "spark", "workers": 2, "address": "x:1",
              "skip": 0, "max": -1, "tolerance": 0.0, "sequential_method": "greedy", "radii": [0.1],
              "consensus": 1, "split": "list.txt"}


@pytest.mark.parametrize("option", sorted(BAD_VALUES))
def test_no_python_error_names_a_command_line_flag(tmp_path, linear, option):
    """Every option of srtool.certify, given a bad value: one line, keyword spelling, no `--flag`."""
    model, data = linear
    out = tmp_path / "r.parquet"
    with pytest.raises(UsageError) as raised:
        srtool.certify(model, images=data, out=out, **{option: BAD_VALUES[option]})
    message = str(raised.value)
    assert_one_keyword_spelled_line(message)
    assert option in message or option.replace("_", "") in message.replace("_", ""), message
    assert not out.exists()


def test_python_callers_are_told_the_keyword_to_pass(tmp_path, linear):
    model, data = linear
    big = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(UsageError, match=r"pass image_size=28 to resize on load, or patch_size=/patches= to crop$"):
        srtool.Smooth(model).certify(big, n0=10, n=50)
    resized = srtool.Smooth(model, image_size=28).certify(big, n0=10, n=50)  # the keyword it named works
    assert resized.n == 50
    out = tmp_path / "r.parquet"
    srtool.certify(model, images=data, n0=10, n=50, max=1, out=out)
    with pytest.raises(UsageError, match=r"\(n\); use overwrite=True or another out=$"):
        srtool.certify(model, images=data, n0=10, n=60, max=1, out=out)
    with pytest.raises(UsageError, match=r"^unknown argument 'batch_size' \(use batch\)$"):
        srtool.certify(model, images=data, out=out, batch_size=8)
    with pytest.raises(UsageError, match=r"^unknown argument 'sigmas' \(did you mean sigma\?\)$"):
        srtool.certify(model, images=data, out=out, sigmas=0.5)


def test_batch_is_the_one_name_and_batch_size_still_works_with_a_warning(linear):
    model, data = linear
    x = np.load(data)["x"][:2, None]
    smooth = srtool.Smooth(model)
    new = smooth.certify(x, n0=10, n=100, batch=16)
    with pytest.warns(DeprecationWarning, match="use batch="):
        old = smooth.certify(x, n0=10, n=100, batch_size=16)
    assert old.counts.tolist() == new.counts.tolist()
    with pytest.warns(DeprecationWarning), pytest.raises(UsageError, match="not both"):
        smooth.predict(x, n=100, batch=8, batch_size=16)


# -- 11. Results metrics say why, or refuse ------------------------------------------------------------

def test_results_metrics_on_predict_unlabelled_runs_and_lists(tmp_path, linear):
    model, data = linear
    certified = srtool.certify(model, images=data, n0=10, n=100, out=tmp_path / "c.parquet")
    rows = certified.table.to_pylist()
    radii = [0, 0.1, 0.25, 0.5]
    expected = [np.mean([r["correct"] and r["radius"] >= radius for r in rows]) for radius in radii]
    assert certified.certified_accuracy(radii).tolist() == pytest.approx(expected)
    assert certified.certified_accuracy(np.array(radii)).tolist() == pytest.approx(expected)
    assert certified.certified_accuracy(np.float32(0.1)) == pytest.approx(expected[1])
    with pytest.raises(UsageError, match="^radii must be numbers ≥ 0"):
        certified.certified_accuracy([0.1, "far"])
    predicted = srtool.predict(model, images=data, n=100, out=tmp_path / "p.parquet")
    for metric in (predicted.acr, lambda: predicted.certified_accuracy(0.1)):
        with pytest.raises(UsageError, match="needs a certify run; .*p.parquet is a predict run, which has no radii"):
            metric()
    x = np.load(data)["x"]
    unlabelled = srtool.certify(model, images=x, n0=10, n=100, out=tmp_path / "u.parquet")
    with pytest.warns(UserWarning, match="none of the 6 evaluated inputs .* has a label"):
        assert math.isnan(unlabelled.acr())
    with pytest.warns(UserWarning, match="certified accuracy is NaN"):
        assert np.isnan(unlabelled.certified_accuracy([0.1, 0.2])).all()


# -- 12. arrays as images -------------------------------------------------------------------------------

def test_an_array_of_images_is_the_npz_run(tmp_path, linear):
    model, data = linear
    archive = np.load(data)
    from_file = srtool.certify(model, images=data, n0=10, n=100, seed=2, out=tmp_path / "file.parquet")
    for shape in ("NCHW", "NHW"):
        x = archive["x"][:, None] if shape == "NCHW" else archive["x"]
        out = tmp_path / f"{shape}.parquet"
        in_memory = srtool.certify(model, images=x, labels=archive["y"], n0=10, n=100, seed=2, out=out)
        assert without(in_memory.table, "path") == without(from_file.table, "path")
        assert in_memory.config["dataset"].startswith(f"array {'×'.join(map(str, x.shape))} uint8 sha256:")
        # the same array resumes (nothing to redo); another array under the same name is refused
        again = srtool.certify(model, images=x, labels=list(archive["y"]), n0=10, n=100, seed=2, out=out)
        assert without(again.table) == without(in_memory.table)
        with pytest.raises(UsageError, match=r"different configuration \(dataset\)"):
            srtool.certify(model, images=x[::-1].copy(), labels=archive["y"], n0=10, n=100, seed=2, out=out)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 28), np.uint8), None, "x must be N×C×H×W, N×H×W×C or N×H×W"),
    (np.zeros((2, 1, 28, 28), np.uint8), [0, 1, 2], "3 labels for 2 images"),
    (np.zeros((2, 1, 28, 28), np.uint8), [0.5, 1], "not whole numbers"),
    (np.zeros((2, 1, 28, 28), np.uint8), ["cat", "dog"], "not integer labels"),
    (np.full((2, 1, 28, 28), 3.0, np.float32), None, "outside \\[0,1\\]"),
    (np.array([["a"]], dtype=object), None, "an array of pixels"),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path, linear, images, labels, message):
    model, _ = linear
    out = tmp_path / "r.parquet"
    with pytest.raises(UsageError, match=message) as raised:
        srtool.certify(model, images=images, labels=labels, out=out)
    assert "\n" not in str(raised.value) and not out.exists() and not Path(f"{out}.parts").exists()
    with pytest.raises(UsageError, match="save them"):
        srtool.certify(model, images=np.zeros((2, 1, 28, 28), np.uint8), engine="ray", out=out)


# -- 13. load_images: the command line's loading ---------------------------------------------------------

def test_load_images_is_what_the_command_line_certifies(tmp_path, linear, capsys):
    model, data = linear
    out = tmp_path / "cli.parquet"
    assert cli("certify", "--model", model, "--images", data, "--image-size", 28, "--n0", 10, "--n", 100,
               "--out", out, "--quiet", capsys=capsys)[0] == 0
    x, y = srtool.load_images(data, image_size=28, model=model)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and y.tolist() == np.load(data)["y"].tolist()
    rows = read(out)[0].to_pylist()
    assert srtool.Smooth(model).certify(x, n0=10, n=100).counts.tolist() == [r["counts"] for r in rows]
    big, _ = srtool.load_images(data, image_size=40)
    rgb, _ = srtool.load_images(data, channels=3)
    assert big.shape == (6, 1, 40, 40) and rgb.shape == (6, 3, 28, 28)
    assert np.array_equal(rgb[:, 0], rgb[:, 2]) and np.array_equal(rgb[:, :1], srtool.load_images(data)[0])


def test_load_images_of_mixed_sizes_names_the_keyword(tmp_path):
    import cv2

    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 30), np.uint8))
    cv2.imwrite(str(folder / "b.png"), np.zeros((28, 28), np.uint8))
    with pytest.raises(UsageError, match=r"images differ in shape .*; pass image_size= to resize them on load"):
        srtool.load_images(folder)
    x, y = srtool.load_images(folder, image_size=16)
    assert x.shape == (2, 1, 16, 16) and y.tolist() == [-1, -1]
    with pytest.raises(UsageError, match="^image_size must be a positive whole number, not 16.0$"):
        srtool.load_images(folder, image_size=16.0)


# -- 15. σ warnings -----------------------------------------------------------------------------------

def test_sigma_above_one_or_unlike_the_models_is_said(tmp_path, linear, capsys):
    model, data = linear
    code, _, err = cli("certify", "--model", model, "--images", data, "--sigma", 64, "--n0", 10, "--n", 50,
                       "--out", tmp_path / "a.parquet", "--quiet", capsys=capsys)
    assert code == 0 and "warning: σ = 64 is larger than the whole [0,1] pixel range" in err
    assert "warning: σ = 64 differs from the σ = 0.25 the model was trained with" in err
    code, _, err = cli("certify", "--model", model, "--images", data, "--sigma", 0.5, "--n0", 10, "--n", 50,
                       "--out", tmp_path / "b.parquet", "--quiet", capsys=capsys)
    assert code == 0 and "differs from the σ = 0.25" in err and "larger than" not in err
    code, _, err = cli("certify", "--model", model, "--images", data, "--n0", 10, "--n", 50,
                       "--out", tmp_path / "c.parquet", "--quiet", capsys=capsys)
    assert code == 0 and "warning" not in err
    with pytest.warns(UserWarning) as caught:
        srtool.Smooth(model, sigma=2.0)
    assert [str(w.message)[:22] for w in caught] == ["σ = 2 is larger than t", "σ = 2 differs from the"]
    with pytest.warns(UserWarning, match="σ = 0.12 differs"):
        srtool.certify(model, images=data, sigma=0.12, n0=10, n=50, out=tmp_path / "d.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        srtool.Smooth(model, sigma=np.float32(0.25))  # the model's own σ, as float32: nothing to say


# -- 16. the largest radius n and α allow ---------------------------------------------------------------

def test_radius_columns_past_what_n_and_alpha_allow_are_marked(tmp_path, linear, capsys):
    model, data = linear
    out = tmp_path / "r.parquet"
    assert cli("certify", "--model", model, "--images", data, "--n0", 10, "--n", 200, "--out", out, "--quiet",
               capsys=capsys)[0] == 0
    cap = 0.25 * norm.ppf(0.001 ** (1 / 200))
    assert cap / 0.25 == pytest.approx(1.8257, abs=1e-4)  # the 1.83σ at n = 200
    code, stdout, _ = cli("report", out, "--format", "json", capsys=capsys)
    assert json.loads(stdout)[0]["max_radius"] == pytest.approx(cap)
    assert max(r["radius"] for r in read(out)[0].to_pylist()) <= cap + 1e-12
    code, stdout, err = cli("report", out, "--radii", "0.25,0.45,0.5", capsys=capsys)
    cells = stdout.splitlines()[1].split()[-3:]
    assert not cells[0].endswith("*") and not cells[1].endswith("*") and cells[2] == "0.0%*"
    assert f"certify no radius above {cap:.3g} = 1.83σ" in err and "@0.5 is 0 by construction" in err
    code, _, err = cli("report", out, "--radii", "0.1,0.2", capsys=capsys)
    assert "by construction" not in err
    code, stdout, err = cli("show", out, capsys=capsys)  # the inputs whose radius is that largest one
    rows = read(out)[0].to_pylist()
    capped = [r for r in rows if r["count"] == r["n"]]
    assert capped and all(r["radius"] == pytest.approx(cap) for r in capped)
    assert stdout.count("*") == len(capped) and f"* {len(capped)} of 6 inputs got every one of the n = 200" in err


# -- 17. a grey image on an RGB model -------------------------------------------------------------------

def test_grey_images_on_an_rgb_model_are_certified_as_their_three_channel_copy(tmp_path, make_linear, linear):
    _, data = linear
    rng = np.random.default_rng(0)
    rgb_model = make_linear(rng.normal(size=(3 * 28 * 28, 10)), np.zeros(10), (3, 28, 28), name="rgb.onnx",
                            metadata={"srtool.sigma": 0.25})
    grey = np.load(data)["x"][:2]
    smooth = srtool.Smooth(rgb_model)
    as_grey = smooth.certify(grey[:, None], n0=10, n=100)
    as_rgb = smooth.certify(np.repeat(grey[:, None], 3, axis=1), n0=10, n=100)
    assert as_grey.counts.tolist() == as_rgb.counts.tolist() and as_grey.radius.tolist() == as_rgb.radius.tolist()
    said = srtool.certify(rgb_model, images=data, n0=10, n=50, out=tmp_path / "grey.parquet").config
    assert said["grey_inputs"] == core.GREY_TO_RGB and "radius/√3" in said["grey_inputs"]
    colour = np.repeat(np.load(data)["x"][:, None], 3, axis=1)
    assert "grey_inputs" not in srtool.certify(rgb_model, images=colour, n0=10, n=50,
                                               out=tmp_path / "rgb.parquet").config


# -- 14, 19. report names, plots and markup -----------------------------------------------------------

def test_report_names_never_collide(tmp_path, linear, capsys):
    model, data = linear
    runs = {"certify.parquet": [], "predict.parquet": ["predict"], "seq.parquet": ["--sequential"],
            "a/run[x].parquet": [], "b/run[x].parquet": []}
    for name, extra in runs.items():
        command = "predict" if extra == ["predict"] else "certify"
        flags = [] if command == "predict" else ["--n0", 10, *extra]
        assert cli(command, "--model", model, "--images", data, "--n", 50, *flags, "--out", tmp_path / name,
                   "--quiet", capsys=capsys)[0] == 0
    paths = [tmp_path / name for name in runs]
    code, stdout, _ = cli("report", *paths, "--format", "json", capsys=capsys)
    labels = [s["label"] for s in json.loads(stdout)]
    # certify and predict, sequential and fixed differ by name; three runs named alike by their files
    assert labels[:3] == ["RS σ=0.25 [certify]", "RS σ=0.25 predict", "RS σ=0.25 sequential"]
    assert labels[3:] == ["RS σ=0.25 [a/run[x]]", "RS σ=0.25 [b/run[x]]"]
    code, stdout, _ = cli("report", *paths, capsys=capsys)  # rich must not read [x] as markup
    assert code == 0 and "RS σ=0.25 [a/run[x]]" in stdout and "RS σ=0.25 [b/run[x]]" in stdout


def test_plot_draws_unlabelled_runs_as_the_share_certified(tmp_path, linear, capsys, monkeypatch):
    import matplotlib.axes

    model, data = linear
    labelled, unlabelled = tmp_path / "labelled.parquet", tmp_path / "unlabelled.parquet"
    x = np.load(data)["x"]
    srtool.certify(model, images=data, n0=10, n=100, out=labelled)
    srtool.certify(model, images=x, n0=10, n=100, out=unlabelled)
    drawn = {}
    original = matplotlib.axes.Axes.plot

    def record(self, grid, curve, **style):
        drawn[style["label"]] = (np.asarray(grid), np.asarray(curve), style["linestyle"])
        return original(self, grid, curve, **style)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    code, _, err = cli("report", unlabelled, "--plot", tmp_path / "u.png", capsys=capsys)
    assert code == 0 and (tmp_path / "u.png").is_file() and "share of inputs certified" in err
    drawn.clear()
    code, _, err = cli("report", labelled, unlabelled, "--plot", tmp_path / "both.png", capsys=capsys)
    assert code == 0 and len(drawn) == 2
    grid, curve, style = drawn["RS σ=0.25 [unlabelled] (unlabelled: share certified)"]
    rows = read(unlabelled)[0].to_pylist()
    assert style == ":" and curve[0] == np.mean([r["predict"] >= 0 for r in rows])
    assert curve[200] == np.mean([r["predict"] >= 0 and r["radius"] >= grid[200] for r in rows])
    assert drawn["RS σ=0.25 [labelled]"][2] == "-"


def test_show_escapes_markup_and_keeps_class_names_whole(tmp_path, make_linear, capsys, monkeypatch):
    import cv2

    names = ["a rather long class name", "another long class name"]
    model = make_linear(np.array([[1.0, -1.0]] * 16), np.zeros(2), (1, 4, 4),
                        metadata={"srtool.sigma": 0.25, "srtool.classes": json.dumps(names)})
    folder = tmp_path / "photos [2024]"
    folder.mkdir()
    cv2.imwrite(str(folder / "shot[1].png"), np.full((4, 4), 200, np.uint8))
    out = tmp_path / "r.parquet"
    assert cli("certify", "--model", model, "--images", folder, "--n0", 10, "--n", 50, "--out", out, "--quiet",
               capsys=capsys)[0] == 0
    monkeypatch.setenv("FORCE_TERMINAL", "1")  # a narrow terminal: 40 columns
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("NO_COLOR", "1")
    code, stdout, _ = cli("show", out, capsys=capsys)
    assert code == 0 and "shot[1].png" in stdout and str(folder) not in stdout  # named from its folder
    assert "a rather long class name" in stdout and "…" not in stdout


# -- 19. bench figures that agree ------------------------------------------------------------------------

def test_bench_ratio_is_the_ratio_of_the_printed_medians(capsys):
    code, stdout, err = cli("bench", "--seconds", 0.3, "--threads", 1, "--batch", 50, "--json", capsys=capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["ratio"] == pytest.approx(result["pipeline_forward_per_s"] / result["raw_forward_per_s"], rel=1e-12)


# -- 20. video output, progress of a finished run, reprs --------------------------------------------------

def test_video_header_show_paths_and_no_empty_progress_bar(tmp_path, capsys):
    out = tmp_path / "v.parquet"
    code, _, err = cli("video", "--n0", 3, "--n", 20, "--max", 2, "--threads", 1, "--out", out, capsys=capsys)
    assert code == 0 and "srtool video: video_demo_sigma0.25.onnx" in err and "srtool certify" not in err
    code, _, err = cli("video", "--n0", 3, "--n", 20, "--max", 2, "--threads", 1, "--out", out, capsys=capsys)
    assert code == 0 and "0 to go" in err and "0/0" not in err
    code, stdout, _ = cli("show", out, capsys=capsys)
    assert "clockwise/clockwise_0.mp4" in stdout and str(core.asset(core.DEFAULT_VIDEOS)) not in stdout
    code, stdout, _ = cli("show", out, "--format", "csv", capsys=capsys)  # tools still get the full path
    assert str(core.asset(core.DEFAULT_VIDEOS)) in stdout


def test_certificate_and_prediction_reprs_are_one_short_line(linear):
    model, data = linear
    x = np.load(data)["x"]
    smooth = srtool.Smooth(model)
    one = smooth.certify(x[0][None], n0=10, n=100)
    text = repr(one)
    assert text == (f"Certificate(label={one.label}, radius={one.radius:.4g}, p_lower={one.p_lower:.4g}, "
                    f"count={one.count}, n=100, radius_factor=1, counts=<10 classes>)")
    many = repr(smooth.certify(np.repeat(x[:, None], 20, axis=0), n0=10, n=50))
    assert "\n" not in many and len(many) < 300 and "counts=<120 images × 10 classes>" in many
    assert repr(smooth.predict(x[0][None], n=50)).startswith("Prediction(label=")
    sequential = repr(smooth.certify(x[0][None], n0=10, n=100, sequential=True))
    assert "stop=" in sequential


# -- 18. exporters --------------------------------------------------------------------------------------

NETS = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.head = nn.Linear(3 * 4 * 4, classes)

    def forward(self, x):
        return self.head(torch.flatten(x, 1))

    @classmethod
    def build(cls, classes=1000):
        return cls(classes)
'''


def test_exporter_imagenet_classes_and_class_method_factory(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import onnx

    from exporters import common, factory
    from exporters.archs import SMOOTHING_ARCHS

    names = common.read_classes("imagenet")
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[1], names[134], names[517], names[999]) == (
        "tench", "goldfish", "crane (bird)", "crane (machine)", "toilet tissue")
    assert SMOOTHING_ARCHS["resnet50"].names_for(1000) == names
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tiny.onnx"
    code = common.run_cli(factory.main, ["--factory", f"{tmp_path / 'nets.py'}:Tiny.build", "--input-shape", "3,4,4",
                                         "--classes", "imagenet", "--sigma", "0.25", "-o", str(out),
                                         "--parity-batch", "1"])
    assert code == 0, capsys.readouterr().err
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["srtool.arch"] == "nets.py:Tiny.build" and str(tmp_path) not in json.dumps(meta)
    assert json.loads(meta["srtool.classes"]) == names
    code = common.run_cli(factory.main, ["--factory", "nets:Tiny.missing", "--input-shape", "3,4,4", "-o",
                                         str(tmp_path / "x.onnx")])
    assert code == 2 and "error: --factory: 'nets' has no callable 'Tiny.missing'" in capsys.readouterr().err


# -- fuzz: any value for any keyword is a result or one line in keyword spelling ---------------------------

from hypothesis import given, strategies as st  # noqa: E402


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(["auto", "1000", "0.25", "ray", "cuda", "mean", "input", "union"]),
    st.integers(-5, 5).map(np.int64), st.floats(-2, 2).map(np.float32), st.just(np.bool_(True)),
    st.lists(st.floats(-1, 1), max_size=3), st.just(np.zeros((2, 2))), st.just(Path("x")))


@pytest.mark.filterwarnings("ignore::UserWarning")  # σ warnings: allowed values, said as warnings
@given(keywords=st.dictionaries(st.sampled_from(sorted(BAD_VALUES) + ["labels", "overwrite", "sequential"]),
                                ANY_VALUE, min_size=1, max_size=3))
def test_fuzz_keywords_give_a_result_or_one_keyword_spelled_line(tmp_path_factory, prototype_run, keywords):
    model, data = prototype_run(2)
    out = tmp_path_factory.mktemp("fuzz") / "r.parquet"
    options = {"max": 0, **keywords}  # whatever passes the checks evaluates no input: the checks are the test
    try:
        results = srtool.certify(model, images=data, out=out, **options)
    except UsageError as error:
        assert_one_keyword_spelled_line(str(error))
        assert not out.exists(), str(error)
    else:
        assert out.is_file() and len(results) <= 2


SMALL_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.sampled_from(["auto", "100", "union", "staged"]), st.integers(-3, 300).map(np.int32),
    st.floats(0, 1).map(np.float64), st.lists(st.floats(0, 1), max_size=3), st.just(np.ones((2, 2))))


@pytest.mark.filterwarnings("ignore::UserWarning")
@given(keywords=st.dictionaries(st.sampled_from(["n0", "n", "alpha", "batch", "index", "sequential", "radii",
                                                 "tolerance", "sequential_method"]),
                                SMALL_VALUE, min_size=1, max_size=3))
def test_fuzz_smooth_certify_keywords(prototype_run, keywords):
    model, data = prototype_run(1)
    x = np.load(data)["x"][0][None]
    try:
        cert = srtool.Smooth(model).certify(x, **{"n0": 10, "n": 50, **keywords})
    except UsageError as error:
        assert_one_keyword_spelled_line(str(error))
    else:
        assert int(np.sum(cert.counts)) == cert.n and type(cert.n) is int


# -- one error path, no import circle ----------------------------------------------------------

@pytest.mark.parametrize("call", ["smooth_certify", "smooth_predict", "certify"])
@pytest.mark.parametrize("alias", ["n_samples", "num", "sample_size", "nn"])
def test_other_libraries_names_for_n_are_told_the_keyword_everywhere(tmp_path, linear, call, alias):
    model, data = linear
    x = np.load(data)["x"][:1, None]
    with pytest.raises(UsageError, match=rf"^unknown argument '{alias}' \(did you mean n\?\)$"):
        if call == "certify":
            srtool.certify(model, images=data, out=tmp_path / "r.parquet", **{alias: 50})
        else:
            with srtool.Smooth(model, sigma=0.25) as smooth:
                getattr(smooth, call.split("_")[1])(x, **{alias: 50})


def test_the_python_spelling_facts_are_the_command_lines():
    """core.FLAGS / core.CHOICES (what api renders messages from) say what the CLI declares."""
    import click

    from srtool.cli import cli as command_line

    flags, choices = set(), {}
    for command in command_line.commands.values():
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if getattr(param, "is_flag", False) and not param.secondary_opts:
                    flags.add(opt.removeprefix("--"))
                if isinstance(param.type, click.Choice):
                    choices.setdefault(opt.removeprefix("--"), set()).update(param.type.choices)
    assert flags - {"help", "debug", "version"} <= set(core.FLAGS) | {"diffusion"}
    assert {name: set(words) for name, words in core.CHOICES.items()} == choices


def test_srtool_imports_form_no_circle():
    """srtool/*.py's imports of each other (module level or inside functions) have no cycle."""
    import ast

    package = Path(srtool.__file__).parent
    edges = {}
    for path in package.glob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                targets.update(name.split(".")[0] for name in names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srtool."):
                targets.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".")[1] for a in node.names if a.name.startswith("srtool."))
        edges[path.stem] = {t for t in targets if (package / f"{t}.py").exists()} - {path.stem}
    assert len(edges) > 15 and edges["api"] and edges["cli"]  # the parse found the imports
    state = {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(edges[module]):
            assert state.get(target) != "open", " → ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_docs_cite_only_the_repository():
    """The user reads only the repository: no design-notes sections, no issue numbers."""
    root = Path(__file__).parent.parent
    for path in [*sorted((root / "docs").glob("*.md")), root / "exporters" / "README.md", root / "README.md"]:
        text = path.read_text()
        assert not re.search(r"DESIGN\b|§|\b[Ii]ssues? #?\d", text), path.name
    readme = (root / "README.md").read_text()
    assert "srtool[pandas]" in readme and "`rotated` is true" in readme


def test_exporter_failures_name_their_cause_and_debug_keeps_exit_2(capsys):
    pytest.importorskip("torch")
    from exporters.common import ExportError, export_failure, run_cli
    from exporters.factory import parse_shape_any

    try:
        try:
            raise ValueError("aten::foo has no ONNX symbolic\nmore text")
        except ValueError as inner:
            raise RuntimeError("PassError: pass Decompose failed") from inner
    except RuntimeError as outer:
        message = str(export_failure(outer))
    assert "RuntimeError: PassError" in message and "caused by ValueError: aten::foo has no ONNX symbolic" in message
    assert "\n" not in message

    def failing(args):
        raise ExportError("no such checkpoint")

    assert run_cli(failing, []) == 2 and run_cli(failing, ["--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert parse_shape_any("") == () and parse_shape_any("1,32,32") == (1, 32, 32)  # '' : rank 1, one level per image


RANK_ONE_LEVEL = '''
import torch
from torch import nn

class PerImageLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, level):
        return x - 0.001 * self.conv(x) * level[:, None, None, None]
'''


def test_an_exported_denoiser_can_take_one_noise_level_per_image(tmp_path, capsys):
    pytest.importorskip("torch")
    from exporters import factory
    from exporters.common import run_cli
    from srtool.denoise import load_denoiser

    source = tmp_path / "toy.py"
    source.write_text(RANK_ONE_LEVEL)
    out = tmp_path / "den.onnx"
    code = run_cli(factory.main, ["--kind", "denoiser", "--factory", f"{source}:PerImageLevel", "--input-shape",
                                  "1,12,12", "--noise-level-shape", "", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    denoiser = load_denoiser(out, "denoiser")
    assert denoiser.level_input is not None and denoiser.level_shape == ()  # not exported blind
