"""Every dataset format, read back from files written here."""

from __future__ import annotations

import gzip
import pickle
import struct

import cv2
import numpy as np
import pytest

from srtool.data import conform, open_images
from srtool.errors import UsageError


def images_uint8(n=5, shape=(8, 8, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_image_folder_layout_labels_by_sorted_class_name(tmp_path):
    rgb = images_uint8(4)
    for i, cls in enumerate(["zebra", "ant", "ant", "moth"]):
        (tmp_path / cls).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / cls / f"{i}.png"), cv2.cvtColor(rgb[i], cv2.COLOR_RGB2BGR))
    dataset = open_images(tmp_path)
    assert dataset.class_names == ["ant", "moth", "zebra"]
    assert dataset.labels == [0, 0, 1, 2]
    item = dataset[3]  # zebra/0.png
    assert item.image.shape == (3, 8, 8) and item.image.dtype == np.float32
    assert np.allclose(item.image, np.moveaxis(rgb[0], -1, 0) / 255.0)  # RGB, not OpenCV's BGR


def test_flat_folder_with_labels_csv_and_an_unreadable_file(tmp_path):
    gray = images_uint8(2, (6, 6))
    cv2.imwrite(str(tmp_path / "a.png"), gray[0])
    cv2.imwrite(str(tmp_path / "b.png"), gray[1])
    (tmp_path / "c.png").write_bytes(b"not a png")
    (tmp_path / "labels.csv").write_text("filename,label\na.png,3\nb.png,7\n")
    dataset = open_images(tmp_path, tmp_path / "labels.csv")
    assert dataset.labels == [3, 7, -1]
    dataset.channels = 1
    assert np.allclose(dataset[1].image[0], gray[1] / 255.0)
    broken = dataset[2]
    assert broken.image is None and broken.error.startswith("unreadable") and broken.path.endswith("c.png")
    assert open_images(tmp_path).labels == [-1, -1, -1]  # no CSV: unknown labels


def test_labels_csv_is_refused_where_the_dataset_carries_its_own_labels(tmp_path):
    (tmp_path / "labels.csv").write_text("a.png,3\n")
    folder = tmp_path / "classes"
    (folder / "ant").mkdir(parents=True)
    cv2.imwrite(str(folder / "ant" / "a.png"), images_uint8(1, (6, 6))[0])
    np.savez(tmp_path / "x.npz", x=images_uint8(2, (6, 6)), y=np.array([1, 2]))
    for source in (folder, tmp_path / "x.npz"):
        with pytest.raises(UsageError, match="--labels names the labels of a flat folder"):
            open_images(source, tmp_path / "labels.csv")
    assert open_images(folder / "ant" / "a.png", tmp_path / "labels.csv").labels == [3]  # one image: by its name


def test_channels_and_resize_on_load():
    rgb = np.moveaxis(images_uint8(1, (10, 20, 3))[0], -1, 0) / 255.0
    gray = conform(rgb.astype(np.float32), channels=1, size=None)
    assert gray.shape == (1, 10, 20)
    assert np.allclose(gray[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-6)
    assert conform(gray, channels=3, size=None).shape == (3, 10, 20)
    square = conform(rgb.astype(np.float32), channels=3, size=8)  # shorter side 10 → 8, centre crop
    assert square.shape == (3, 8, 8) and 0 <= square.min() and square.max() <= 1


def write_idx(path, array, magic_type=0x08, compress=False):
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_find_their_labels(tmp_path, compress):
    images = images_uint8(6, (28, 28))
    labels = np.arange(6, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=compress)
    dataset = open_images(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    assert dataset.labels == list(range(6))
    assert np.allclose(dataset[4].image[0], images[4] / 255.0)


def test_idx_without_labels_and_truncated(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", images_uint8(3, (4, 4)))
    assert open_images(tmp_path / "train-images-idx3-ubyte").labels == [-1, -1, -1]
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(UsageError, match="IDX header"):
        open_images(tmp_path / "bad-images-idx3-ubyte")


def test_cifar_python_batch_and_names(tmp_path):
    data = images_uint8(5, (3 * 32 * 32,), seed=2).reshape(5, 3072)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4, 1, 5], b"data": data,
             b"filenames": [b"x.png"] * 5}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile"]}, protocol=2))
    dataset = open_images(tmp_path / "test_batch")
    assert dataset.labels == [3, 1, 4, 1, 5] and dataset.class_names == ["airplane", "automobile"]
    assert np.allclose(dataset[2].image, data[2].reshape(3, 32, 32) / 255.0)


def test_cifar_python_batch_refuses_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(UsageError, match="not a CIFAR-10 python batch"):
        open_images(tmp_path / "data_batch_1")


def test_cifar_binary_batch(tmp_path):
    images = images_uint8(3, (3, 32, 32))
    records = np.concatenate([np.array([[7], [0], [9]], dtype=np.uint8), images.reshape(3, -1)], axis=1)
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes())
    dataset = open_images(tmp_path / "test_batch.bin")
    assert dataset.labels == [7, 0, 9] and np.allclose(dataset[1].image, images[1] / 255.0)
    (tmp_path / "bad.bin").write_bytes(records.tobytes()[:-1])
    with pytest.raises(UsageError, match="multiple"):
        open_images(tmp_path / "bad.bin")


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw", "float"])
def test_npz_layouts(tmp_path, layout):
    nhwc = images_uint8(4, (5, 5, 3), seed=3)
    x = {"nchw": np.moveaxis(nhwc, -1, 1), "nhwc": nhwc, "nhw": nhwc[..., 0],
         "float": np.moveaxis(nhwc, -1, 1).astype(np.float32) / 255.0}[layout]
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2, 3, 4]))
    dataset = open_images(tmp_path / "d.npz")
    assert dataset.labels == [1, 2, 3, 4]
    expected = np.moveaxis(nhwc[2], -1, 0)[:1 if layout == "nhw" else 3] / 255.0
    assert np.allclose(dataset[2].image, expected, atol=1e-6)


def test_bad_datasets_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        open_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        open_images(tmp_path / "empty")
    np.savez(tmp_path / "noy.npz", z=np.zeros(3))
    with pytest.raises(UsageError, match="'x'"):
        open_images(tmp_path / "noy.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="unknown dataset format"):
        open_images(tmp_path / "notes.txt")
    np.savez(tmp_path / "range.npz", x=np.full((2, 1, 4, 4), 3.0, dtype=np.float32))
    with pytest.raises(UsageError, match=r"range.npz: x holds float32 values from 3 to 3, outside \[0,1\]"):
        open_images(tmp_path / "range.npz")  # a whole file in the wrong range (tests/test_hostile_data.py)


def test_folder_labels_follow_the_models_class_order(tmp_path):
    from srtool.data import align_labels

    for cls in ("Trouser", "Bag"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "0.png"), np.zeros((4, 4), np.uint8))
    dataset = open_images(tmp_path)
    assert dataset.labels == [0, 1]  # sorted folder names: Bag, Trouser
    align_labels(dataset, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                           "Sneaker", "Bag", "Ankle boot"])
    assert dataset.labels == [8, 1] and dataset.class_names[8] == "Bag"
    other = open_images(tmp_path)
    align_labels(other, ["cat", "dog"])  # folders are not the model's classes: unchanged
    assert other.labels == [0, 1]
