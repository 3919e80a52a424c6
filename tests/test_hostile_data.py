"""Hostile and careless inputs (DESIGN §10): non-finite pixels, floats outside [0,1], labels beyond
the model's classes, and EXIF orientation, each read back from files written here."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from srtool.data import check_labels, exif_orientation, open_images, orient
from srtool.errors import UsageError

NON_FINITE = "non-finite pixel values (NaN or inf)"


def unit_images(n=4, shape=(3, 6, 6), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


# -- non-finite pixels -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_pixel_makes_its_input_an_error_row(tmp_path, bad):
    x = unit_images()
    x[0, 1, 2, 3] = bad
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 3]))
    dataset = open_images(tmp_path / "d.npz")  # one bad image is not a bad dataset
    item = dataset[0]
    assert item.image is None and item.error == NON_FINITE and item.label == 0
    assert np.allclose(dataset[1].image, x[1]) and dataset[1].error is None


def test_non_finite_pixels_in_a_float_image_file(tmp_path):
    image = np.full((5, 5), 0.5, np.float32)
    image[2, 2] = np.nan
    assert cv2.imwrite(str(tmp_path / "nan.tiff"), image)
    assert cv2.imwrite(str(tmp_path / "ok.tiff"), np.full((5, 5), 0.25, np.float32))
    dataset = open_images(tmp_path)
    assert dataset[0].error == NON_FINITE and dataset[0].image is None
    assert dataset[1].error is None and np.allclose(dataset[1].image, 0.25)


# -- floats outside [0,1] --------------------------------------------------------------------------

def test_an_npz_of_floats_0_to_255_is_refused_with_the_range_and_the_fix(tmp_path):
    x = np.zeros((3, 1, 4, 4), np.float32)
    x[1, 0, 0, 0], x[2, 0, 1, 1] = 7.0, 0.5
    x[0, 0, 3, 3] = np.nan  # the range is that of the finite values
    np.savez(tmp_path / "scaled.npz", x=x)
    with pytest.raises(UsageError) as caught:
        open_images(tmp_path / "scaled.npz")
    message = str(caught.value)
    assert "scaled.npz" in message and "from 0 to 7" in message and "outside [0,1]" in message
    assert "x / 255" in message and "uint8" in message
    assert "\n" not in message


def test_an_npz_of_ints_beyond_1_is_refused_but_0_1_ints_are_pixels(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (2, 4, 4)).astype(np.int64)
    x[0, 0, 0], x[1, 0, 0] = 255, 0
    np.savez(tmp_path / "ints.npz", x=x)
    with pytest.raises(UsageError, match=r"int64 values from 0 to 255, outside \[0,1\]; store them as uint8"):
        open_images(tmp_path / "ints.npz")
    np.savez(tmp_path / "binary.npz", x=(x > 127).astype(np.int64))
    assert np.array_equal(open_images(tmp_path / "binary.npz")[0].image[0], (x[0] > 127).astype(np.float32))


def test_an_npz_with_an_inf_but_otherwise_in_range_opens(tmp_path):
    x = unit_images(3)
    x[2, 0, 0, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=x)
    dataset = open_images(tmp_path / "d.npz")
    assert dataset[2].error == NON_FINITE and dataset[0].error is None


def test_a_float_image_file_outside_0_1_is_an_error_row_with_the_range(tmp_path):
    assert cv2.imwrite(str(tmp_path / "a.tiff"), np.linspace(-0.5, 3, 16, dtype=np.float32).reshape(4, 4))
    assert cv2.imwrite(str(tmp_path / "b.tiff"), np.full((4, 4), 1.0, np.float32))
    dataset = open_images(tmp_path)
    assert dataset[0].image is None
    assert dataset[0].error.startswith("pixel values from -0.5 to 3 lie outside [0,1]")
    assert dataset[1].error is None and np.allclose(dataset[1].image, 1.0)


# -- labels outside the model's classes ------------------------------------------------------------

def test_check_labels_names_the_first_offending_input(tmp_path):
    np.savez(tmp_path / "d.npz", x=unit_images(5), y=np.array([0, 9, -1, 99, 10]))
    dataset = open_images(tmp_path / "d.npz")
    with pytest.raises(UsageError) as caught:
        check_labels(dataset, 10)
    assert str(caught.value) == (f"{tmp_path / 'd.npz'}: label 99 of input 3 is outside the model's 10 "
                                 "classes (0–9; -1 = unlabelled) (and 1 more)")
    check_labels(dataset, 100)  # 0, 9, 99 and the unlabelled -1 all fit
    check_labels(dataset, None)  # class count unknown: nothing to check
    dataset.labels = [0, -2]
    with pytest.raises(UsageError, match="label -2 of input 1 is outside the model's 3 classes"):
        check_labels(dataset, 3)


# -- EXIF orientation ------------------------------------------------------------------------------

def tiff_exif(orientation: int, big_endian: bool = False) -> bytes:
    """A TIFF-structured EXIF block whose first directory holds a software tag, then the orientation."""
    order = ">" if big_endian else "<"
    header = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    software = struct.pack(order + "HHI4s", 0x0131, 2, 4, b"srt\x00")  # ASCII, stored inline
    tag = struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return header + struct.pack(order + "H", 2) + software + tag + struct.pack(order + "I", 0)


def jpeg_with_orientation(image_bgr: np.ndarray, orientation: int, big_endian: bool = False) -> tuple[bytes, bytes]:
    """A JPEG with an APP1 Exif segment put right after SOI, as cameras write it; and the same without."""
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    payload = b"Exif\x00\x00" + tiff_exif(orientation, big_endian)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    raw = encoded.tobytes()
    return raw[:2] + app1 + raw[2:], raw


def png_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A PNG with an eXIf chunk before the image data."""
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    raw = encoded.tobytes()
    body = tiff_exif(orientation)
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, 13 bytes, CRC
    return raw[:ihdr_end] + chunk + raw[ihdr_end:]


def quadrants(h=32, w=48, channels=3) -> np.ndarray:
    """Large flat blocks (JPEG keeps them), each a different colour, so any turn or mirror shows."""
    colours = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20]], np.uint8)
    image = np.empty((h, w, 3), np.uint8)
    image[:h // 2, :w // 2], image[:h // 2, w // 2:] = colours[0], colours[1]
    image[h // 2:, :w // 2], image[h // 2:, w // 2:] = colours[2], colours[3]
    return image if channels == 3 else image[..., 0]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_is_applied_and_recorded(tmp_path, orientation, big_endian):
    rgb = quadrants()
    tagged, plain = jpeg_with_orientation(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), orientation, big_endian)
    (tmp_path / "photo.jpg").write_bytes(tagged)
    item = open_images(tmp_path / "photo.jpg")[0]
    as_stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    expected = np.moveaxis(orient(as_stored, orientation), -1, 0) / np.float32(255)
    assert item.error is None and np.array_equal(item.image, expected)
    # and close to the pixels drawn (a wrong turn would be off by about half the range)
    assert np.abs(item.image - np.moveaxis(orient(rgb, orientation), -1, 0) / 255).mean() < 8 / 255
    assert item.rotated == (orientation != 1)
    if orientation in (5, 6, 7, 8):
        assert item.image.shape[1:] == (48, 32)  # stored landscape, shown portrait


def test_turns_are_the_ones_photo_viewers_apply():
    """orient(6) turns clockwise: the stored top-left corner ends up top-right."""
    stored = np.array([[1, 2, 3], [4, 5, 6]])
    assert orient(stored, 6).tolist() == [[4, 1], [5, 2], [6, 3]]
    assert orient(stored, 8).tolist() == [[3, 6], [2, 5], [1, 4]]
    assert orient(stored, 3).tolist() == [[6, 5, 4], [3, 2, 1]]
    assert orient(stored, 2).tolist() == [[3, 2, 1], [6, 5, 4]]


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16"])
def test_png_exif_orientation_for_every_depth_and_channel_count(tmp_path, kind):
    rgb = quadrants(8, 12)
    if kind == "gray":
        stored, expected = rgb[..., 0], rgb[..., :1]
    elif kind == "rgba":
        alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
        stored, expected = np.concatenate([rgb[..., ::-1], alpha], -1), rgb  # BGRA for OpenCV; alpha dropped
    else:
        stored, expected = rgb[..., 0].astype(np.uint16) * 257, rgb[..., :1]
    (tmp_path / "a.png").write_bytes(png_with_orientation(stored, 6))
    (tmp_path / "b.png").write_bytes(png_with_orientation(stored, 1))
    dataset = open_images(tmp_path)
    turned, plain = dataset[0], dataset[1]
    assert turned.rotated and not plain.rotated
    assert np.array_equal(turned.image, np.moveaxis(orient(expected, 6), -1, 0) / np.float32(255))
    assert np.array_equal(plain.image, np.moveaxis(expected, -1, 0) / np.float32(255))


def test_malformed_or_absent_exif_reads_as_upright(tmp_path):
    good = jpeg_with_orientation(quadrants(), 6)[0]
    assert exif_orientation(good) == 6
    cut = good[:good.index(b"Exif") + 12]  # the block ends inside the directory
    assert exif_orientation(cut) == 1
    assert exif_orientation(b"") == 1 and exif_orientation(b"\xff\xd8\xff") == 1
    assert exif_orientation(b"GIF89a" + bytes(20)) == 1
    broken_offset = good.replace(b"II*\x00\x08\x00\x00\x00", b"II*\x00\xff\xff\x00\x00")
    assert exif_orientation(broken_offset) == 1
    (tmp_path / "odd.jpg").write_bytes(broken_offset)  # a decodable image with an unreadable tag
    item = open_images(tmp_path / "odd.jpg")[0]
    assert item.error is None and not item.rotated and item.image.shape == (3, 32, 48)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_orientation_matches_pil_exif_transpose(tmp_path, fmt):
    """The reference photo viewers agree with: PIL's ImageOps.exif_transpose (not a srtool dependency)."""
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    rgb = quadrants(16, 24)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        options = {"quality": 100} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(rgb).save(path, fmt, exif=exif.tobytes(), **options)
        reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        item = open_images(path)[0]
        assert item.rotated == (orientation != 1), orientation
        got = np.moveaxis(item.image, 0, -1) * 255
        assert got.shape == reference.shape, orientation
        if fmt == "JPEG":  # two decoders of one lossy file: equal up to rounding and chroma upsampling
            assert np.abs(got - reference).mean() < 2, orientation
        else:
            assert np.abs(got - reference).max() < 0.01, orientation


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_orientation_is_applied_once_and_recorded(tmp_path, dtype):
    """OpenCV's TIFF decoder turns TIFF images itself; srtool must not turn them a second time."""
    Image = pytest.importorskip("PIL.Image")
    stored = np.random.default_rng(2).integers(0, 256, (6, 10)).astype(np.uint8)
    pixels = {np.uint8: stored, np.uint16: stored.astype(np.uint16) * 257,
              np.float32: stored.astype(np.float32) / 255}[dtype]
    for orientation in (1, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(tmp_path / f"o{orientation}.tif", "TIFF", exif=exif.tobytes())
        item = open_images(tmp_path / f"o{orientation}.tif")[0]
        assert item.error is None and item.rotated == (orientation == 6)
        assert np.allclose(item.image[0], orient(stored, orientation) / 255.0, atol=1e-6)
