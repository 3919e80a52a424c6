"""Dataset shards (issue 32 §3): Parquet in the Hugging Face layout and WebDataset tars read as
--images, one shard, a glob or a folder, indices continuing across shards."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import srtool
from srtool.data import open_images
from cli_helpers import read, srtool as run_srtool

SAMPLE = Path(srtool.__file__).parent / "assets" / "fashion_mnist_sample.npz"
MODEL = Path(srtool.__file__).parent / "assets" / "fmnist_cnn_sigma0.25.onnx"
COUNT, SPLIT = 9, 5  # images, and where the second shard starts


def _pngs():
    sample = np.load(SAMPLE)
    return [cv2.imencode(".png", image)[1].tobytes() for image in sample["x"][:COUNT]], \
        [int(y) for y in sample["y"][:COUNT]]


def _parquet(path: Path, pngs, labels, start: int):
    table = pa.table({"image": [{"bytes": data, "path": f"{start + i:03d}.png"} for i, data in enumerate(pngs)],
                      "label": labels})
    pq.write_table(table, path, row_group_size=2)  # several row groups: reads cross them


def _tar(path: Path, pngs, labels, start: int):
    with tarfile.open(path, "w") as tar:
        for i, (data, label) in enumerate(zip(pngs, labels)):
            for name, payload in [(f"{start + i:03d}.png", data), (f"{start + i:03d}.cls", f"{label}\n".encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def forms(tmp_path):
    """The same images as a folder (with a labels CSV), two Parquet shards and two tar shards."""
    pngs, labels = _pngs()
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, data in enumerate(pngs):
        (folder / f"{i:03d}.png").write_bytes(data)
    (tmp_path / "labels.csv").write_text("".join(f"{i:03d}.png,{y}\n" for i, y in enumerate(labels)))
    for kind, write in [("parquet", _parquet), ("tar", _tar)]:
        shards = tmp_path / kind
        shards.mkdir()
        write(shards / f"validation-00000-of-00002.{kind}", pngs[:SPLIT], labels[:SPLIT], 0)
        write(shards / f"validation-00001-of-00002.{kind}", pngs[SPLIT:], labels[SPLIT:], SPLIT)
    return tmp_path, labels


def test_shards_read_as_the_folder_does(forms):
    root, labels = forms
    folder = open_images(root / "folder", root / "labels.csv")
    for shards in [root / "parquet", root / "tar", f"{root}/parquet/validation-*.parquet"]:
        dataset = open_images(shards)
        assert dataset.labels == labels
        for i in range(COUNT):
            np.testing.assert_array_equal(dataset[i].image, folder[i].image)
    one = open_images(root / "tar" / "validation-00001-of-00002.tar")
    assert one.labels == labels[SPLIT:] and one.paths[0] == f"validation-00001-of-00002.tar:{SPLIT:03d}"


def test_same_table_from_folder_parquet_and_tar(forms, capsys):
    root, _ = forms
    tables = []
    for name, images, extra in [("folder", root / "folder", ["--labels", root / "labels.csv"]),
                                ("parquet", root / "parquet", []), ("tar", f"{root}/tar/*.tar", [])]:
        out = root / f"{name}.parquet"
        code, _, err = run_srtool("certify", "--model", MODEL, "--images", images, *extra, "--n0", 16, "--n", 64,
                                  "--skip", 2, "--max", 8, "--seed", 1, "--out", out, "--quiet", capsys=capsys)
        assert code == 0, err
        tables.append(read(out)[0].select(["index", "label", "predict", "radius", "correct", "error"]))
    assert tables[0].column("index").to_pylist() == [0, 2, 4, 6]  # index 6 is in the second shard
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_damaged_image_in_a_shard_is_an_error_row(tmp_path):
    pngs, labels = _pngs()
    pngs[1] = b"\x89PNG broken"
    _parquet(tmp_path / "s.parquet", pngs[:3], labels[:3], 0)
    dataset = open_images(tmp_path / "s.parquet")
    assert dataset[0].image is not None and dataset[2].image is not None
    assert dataset[1].image is None and dataset[1].error.startswith("unreadable")


def test_bad_shards_are_one_line(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    code, _, err = run_srtool("certify", "--model", MODEL, "--images", tmp_path / "x.parquet", capsys=capsys)
    assert code == 2 and "not a readable Parquet shard" in err and "Traceback" not in err
    code, _, err = run_srtool("certify", "--model", MODEL, "--images", f"{tmp_path}/none-*.tar", capsys=capsys)
    assert code == 2 and "no file matches" in err


def test_shards_resume_across_the_shard_boundary(forms, capsys):
    root, _ = forms
    out, whole = root / "resumed.parquet", root / "whole.parquet"
    common = ["--model", MODEL, "--images", root / "tar", "--n0", 16, "--n", 64, "--seed", 1, "--quiet"]
    assert run_srtool("certify", *common, "--max", 3, "--out", out, capsys=capsys)[0] == 0
    assert run_srtool("certify", *common, "--max", 8, "--out", out, capsys=capsys)[0] == 0  # extends it
    assert run_srtool("certify", *common, "--max", 8, "--out", whole, capsys=capsys)[0] == 0
    columns = ["index", "label", "predict", "radius", "correct", "path"]
    assert read(out)[0].select(columns).equals(read(whole)[0].select(columns))
