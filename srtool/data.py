"""Image datasets: every reader yields items of float32 C×H×W arrays in [0,1] with an int label.

`open_images(PATH)` accepts
- a folder in the ImageFolder layout (class sub-folders; labels by sorted folder name), or a flat
  folder of images (label -1, or labels from a CSV of `filename,label` rows);
- a single image file;
- CIFAR-10 batches, python (`data_batch_1`, `test_batch`) or binary (`*.bin`) format;
- MNIST / Fashion-MNIST IDX files, gzipped or not (the labels file beside it is found by name);
- `.npz` with `x` (N×C×H×W or N×H×W×C or N×H×W; uint8 0–255 or float in [0,1]) and optional `y`;
- dataset shards of encoded images, one shard, a glob of them or a folder of them (read in name
  order, indices continuing from shard to shard): Parquet in the Hugging Face `datasets` layout (an
  `image` struct column {bytes, path} and an integer `label`) and WebDataset tar shards (`key.jpg`
  or another image type, with the label in `key.cls`); only the images in flight are decoded;
- from Python, the same arrays in memory (`InMemoryImages`, what `srtool.certify(images=x, labels=y)`
  passes), checked as an `.npz` is and named in the results by their shape and SHA-256.

`load_images` gives Python callers the command line's loading (channels as the model wants,
resize-on-load) as one N×C×H×W array.

Folder images are read lazily, so one unreadable file becomes one error row, not a failed run.
Hostile or careless inputs (DESIGN §10):
- a pixel that is NaN or ±inf makes its input an error row: the sampling graph would turn it into
  votes for class 0, which could then be "certified";
- float pixels outside [0,1]: a whole `.npz` in the wrong range (floats 0–255) is refused when it is
  opened, naming the range found; a single such image elsewhere is an error row;
- EXIF orientation (JPEG, PNG, WebP) is applied as photo viewers apply it, and `Item.rotated` says so;
- `check_labels` refuses labels outside the model's classes once the model's class count is known.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import pickle
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from . import noise
from .errors import UsageError, shown

# A file OpenCV cannot decode becomes an error row that says so; its own WARN lines on stderr would
# only break into the progress bar.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Item:
    index: int
    label: int
    image: np.ndarray | None  # C×H×W float32 in [0,1]; None when it could not be read
    path: str | None = None
    error: str | None = None
    rotated: bool = False  # the file's EXIF orientation was applied (turned or mirrored on load)


class PixelError(ValueError):
    """Pixel values no model input may hold (non-finite, or outside [0,1]); the message is the row's error."""


class Decoded(NamedTuple):
    """What a file reader returns when it knows more than the pixels."""

    image: np.ndarray
    rotated: bool


class Dataset:
    """A sized, indexable collection of items; reading and conversion happen on access."""

    def __init__(self, source: str, labels: list[int], read: Callable[[int], np.ndarray | Decoded],
                 paths: list[str] | None = None, class_names: list[str] | None = None):
        self.source = source
        self.labels = labels
        self._read = read
        self.paths = paths
        self.class_names = class_names
        self.channels: int | None = None  # set by the caller: what the model wants
        self.size: int | None = None  # set by the caller: resize-on-load edge, or None
        self.in_memory = False  # arrays from Python: `source` names them, it is no path
        self.grid = False  # set by the caller (--noise discrete): images made on load are rounded to 1/255
        self.on_grid = True  # every image is k/255 as stored: file readers give 8-bit pixels; arrays are checked

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index] if self.paths else None
        rotated = False
        try:
            raw = self._read(index)
            if isinstance(raw, Decoded):
                raw, rotated = raw
            image = conform(raw, self.channels, self.size, self.grid)
        except UsageError:
            raise
        except PixelError as error:  # readable, but not pixels a model may see
            return Item(index, self.labels[index], None, path, str(error), rotated)
        except Exception as error:  # one bad file is recorded, the run goes on
            return Item(index, self.labels[index], None, path, f"unreadable: {error}".splitlines()[0])
        return Item(index, self.labels[index], image, path, rotated=rotated)


# -- conversion ------------------------------------------------------------------------------------

def to_unit_chw(array: np.ndarray) -> np.ndarray:
    """H×W, H×W×C (channels last, C ≤ 4) or C×H×W; uint8 or float in [0,1] → float32 C×H×W.

    Raises PixelError for values a model input may not hold: NaN or ±inf, or outside [0,1].
    """
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3):
        array = np.moveaxis(array, -1, 0)
    if array.ndim != 3:
        raise ValueError(f"an image must have 2 or 3 axes, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    # A NaN survives noise and the model and comes out as a vote for class 0 (ArgMax of NaN logits),
    # so such an input must never reach the sampling graph.
    if not np.isfinite(array).all():
        raise PixelError("non-finite pixel values (NaN or inf)")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    if low < 0 or high > 1:  # enough digits that the bound crossed shows (1.0000001, not 1)
        raise PixelError(f"pixel values from {low:.9g} to {high:.9g} lie outside [0,1]; "
                         "scale them to [0,1] or store uint8 0–255")
    return array


def conform(image: np.ndarray, channels: int | None, size: int | None, grid: bool = False) -> np.ndarray:
    """Match the channel count the model wants and, if asked, resize on load (shorter side, centre crop).

    `grid` (--noise discrete): an image this makes (resized, grey from colour) is rounded to the
    1/255 grid, and the certificate holds for the rounded image; one given off the grid is an error.
    """
    image = to_unit_chw(image)
    if grid and noise.grid_integers(image) is None:
        raise UsageError("pixel values off the 1/255 grid: --noise discrete needs 8-bit images "
                         "(or floats k/255); use --noise host for other data")
    made = image
    if image.shape[0] == 4:
        image = image[:3]  # drop alpha
    if channels == 1 and image.shape[0] == 3:
        image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None].astype(np.float32)
    elif channels == 3 and image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    if size is not None and image.shape[1:] != (size, size):
        h, w = image.shape[1:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        hwc = np.moveaxis(image, 0, -1)
        resized = cv2.resize(hwc, (new_w, new_h), interpolation=interpolation).reshape(new_h, new_w, -1)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = np.ascontiguousarray(np.moveaxis(resized[top:top + size, left:left + size], -1, 0))
        image = np.clip(image, 0.0, 1.0)
    if grid and image is not made:  # resized or grey: round to the grid (the metadata says so)
        image = np.divide(np.rint(image * np.float32(255)), np.float32(255), dtype=np.float32)
    return image


# -- readers -------------------------------------------------------------------------------------

def _read_image_file(path: str) -> Decoded:
    """An image file as stored (gray, RGB or RGBA; 16 bits become 8), turned as its EXIF orientation says.

    OpenCV applies EXIF orientation only when it may also change depth and channels: IMREAD_UNCHANGED
    (kept here for 16-bit and gray files) leaves a JPEG, PNG or WebP as stored, so the orientation is
    read from the file and applied here. TIFF files are turned by OpenCV's own TIFF decoder (any
    depth), so for them the orientation is only read, to be recorded.
    """
    return decode_image(Path(path).read_bytes())


def decode_image(data: bytes) -> Decoded:
    """An encoded image (a file's bytes, or a shard's entry), as _read_image_file describes."""
    if not data:
        raise ValueError("an empty file (0 bytes)")
    # imdecode rather than imread: OpenCV 5's imread fails on TIFF files that carry an orientation.
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not an image OpenCV can decode")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 3:  # OpenCV gives BGR(A); the models want RGB
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if data[:4] in (b"II*\x00", b"MM\x00*"):  # TIFF: already turned by OpenCV
        try:
            return Decoded(image, _tiff_orientation(data) != 1)
        except (struct.error, IndexError, ValueError):
            return Decoded(image, False)
    orientation = exif_orientation(data)
    return Decoded(np.ascontiguousarray(orient(image, orientation)), orientation != 1)


# -- EXIF orientation -------------------------------------------------------------------------------

def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """An H×W(×C) image as it is displayed under EXIF orientation 1–8 (what PIL's exif_transpose does)."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # turned 180°
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # stored turned 90° counter-clockwise: turn it clockwise
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # transposed across the other diagonal
        8: lambda a: np.rot90(a, 1),  # stored turned 90° clockwise: turn it counter-clockwise
    }
    return transforms.get(orientation, transforms[1])(image)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1–8) in a JPEG, PNG or WebP file's bytes; 1 when there is none.

    Only the container is walked (JPEG segments, PNG or RIFF chunks) up to the EXIF block, then one
    tag of its first directory is read; a malformed block counts as no orientation.
    """
    try:
        exif = _exif_block(data)
        return _tiff_orientation(exif) if exif else 1
    except (struct.error, IndexError, ValueError):
        return 1


def _exif_block(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF payload of a JPEG (APP1), PNG (eXIf) or WebP (EXIF chunk)."""
    if data[:2] == b"\xff\xd8":  # JPEG: markers with big-endian lengths until the image data
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
                return None
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
                continue
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            segment = data[pos + 4:pos + 2 + length]
            if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
                return segment[6:]
            pos += 2 + length
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: length, type, payload, CRC
        pos = 8
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind == b"eXIf":
                return data[pos + 8:pos + 8 + length]
            if kind == b"IEND":
                return None
            pos += 12 + length
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # WebP: fourcc, little-endian size, even padding
        pos = 12
        while pos + 8 <= len(data):
            kind, length = struct.unpack("<4sI", data[pos:pos + 8])
            if kind == b"EXIF":
                payload = data[pos + 8:pos + 8 + length]
                return payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
            pos += 8 + length + (length & 1)
    return None


def _tiff_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of the first image directory of a TIFF-structured block (EXIF's layout)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return 1
    directory = struct.unpack(order + "I", tiff[4:8])[0]
    entries = struct.unpack(order + "H", tiff[directory:directory + 2])[0]
    for i in range(entries):
        entry = directory + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == 0x0112 and kind == 3:  # SHORT, stored in the entry itself
            value = struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _first_line(error: Exception) -> str:
    """An exception's message for a one-line error: its first line, or its type where it says nothing."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of a dataset folder, sorted (hidden ones skipped); none for a flat folder."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _read_labels_csv(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise UsageError(f"labels file not found: {path}")
    labels = {}
    with open(path, newline="") as handle:
        try:
            rows = list(csv.reader(handle))
        except (UnicodeDecodeError, csv.Error) as error:
            raise UsageError(f"{path}: not a CSV of filename,label rows ({_first_line(error)})") from None
    for row in rows:
        if len(row) < 2 or row[0].strip().lower() in ("path", "filename", "file", "name"):
            continue
        try:
            labels[row[0].strip()] = int(row[1])
        except ValueError:
            raise UsageError(f"{path}: label {row[1]!r} for {row[0]!r} is not an integer") from None
    return labels


def _folder(root: Path, labels_csv: Path | None) -> Dataset:
    classes = class_folders(root)
    if classes:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).rglob("*") if _is_image(p))
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        class_names = classes
    else:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        paths = [str(p) for p in files]
        known = _read_labels_csv(labels_csv) if labels_csv else {}
        labels = [known.get(p.name, known.get(str(p), -1)) for p in files]
        class_names = None
    return Dataset(str(root), labels, lambda i: _read_image_file(paths[i]), paths, class_names)


def _open_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as error:
        raise UsageError(f"{path}: damaged gzip file ({_first_line(error)})") from None


def _parse_idx(raw: bytes, source: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{source}: not an unsigned-byte IDX file")
    rank = raw[3]
    if len(raw) < 4 + 4 * rank:
        raise UsageError(f"{source}: IDX header is cut short (rank {rank}, {len(raw)} bytes)")
    dims = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"{source}: IDX header says {dims} but the file holds {data.size} bytes")
    return data.reshape(dims)


def _idx(path: Path) -> Dataset:
    images = _parse_idx(_open_maybe_gzip(path), path)
    if images.ndim != 3:
        raise UsageError(f"{path}: an IDX images file has 3 axes (N×H×W), this one has {images.ndim}")
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1"))
    candidates = [labels_path, labels_path.with_name(labels_path.name.removesuffix(".gz")),
                  labels_path.with_name(labels_path.name + ".gz")]
    found = next((p for p in candidates if p != path and p.is_file()), None)
    labels = _parse_idx(_open_maybe_gzip(found), found) if found else np.full(len(images), -1)
    if labels.ndim != 1:
        raise UsageError(f"{found}: an IDX labels file has 1 axis, this one has {labels.ndim}")
    if len(labels) != len(images):
        raise UsageError(f"{found}: {len(labels)} labels for {len(images)} images")
    return Dataset(str(path), labels.astype(int).tolist(), lambda i: images[i])


class _CifarUnpickler(pickle.Unpickler):
    """Decodes exactly what a CIFAR-10 python batch holds: a dict of bytes, lists and numpy arrays.

    Every global a pickle may name is refused except numpy's array reconstruction (and the codec
    that protocol-2 pickles written by Python 3 use for byte strings), so a hostile file cannot run
    code.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_names(folder: Path) -> list[str] | None:
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            content = _CifarUnpickler(io.BytesIO(meta.read_bytes()), encoding="bytes").load()
            return [n.decode() for n in content[b"label_names"]]
        except Exception:
            return None
    text = folder / "batches.meta.txt"
    try:
        return [line.strip() for line in text.read_text().splitlines() if line.strip()] if text.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _cifar_python(path: Path) -> Dataset:
    try:
        content = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(content[b"data"])
        if data.dtype != np.uint8:  # a cast would turn floats or large numbers into other pixels, silently
            raise ValueError(f"its data holds {data.dtype}, not uint8 pixels")
        data = data.reshape(-1, 3, 32, 32)
        labels = [int(v) for v in content[b"labels"]]
    except Exception as error:
        raise UsageError(f"{path}: not a CIFAR-10 python batch ({_first_line(error)})") from None
    return Dataset(str(path), labels, lambda i: data[i], class_names=_cifar_names(path.parent))


def _cifar_binary(path: Path) -> Dataset:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    record = 1 + 3 * 32 * 32
    if raw.size == 0 or raw.size % record:
        raise UsageError(f"{path}: size is not a multiple of a CIFAR-10 record ({record} bytes)")
    rows = raw.reshape(-1, record)
    images = rows[:, 1:].reshape(-1, 3, 32, 32)
    return Dataset(str(path), rows[:, 0].astype(int).tolist(), lambda i: images[i],
                   class_names=_cifar_names(path.parent))


def _npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
        x = archive["x"]
        y = _whole_labels(archive["y"]) if "y" in archive.files else [-1] * len(x)
    except KeyError:
        raise UsageError(f"{path}: an .npz dataset needs an array named 'x'") from None
    except Exception as error:
        raise UsageError(f"{path}: cannot read as .npz ({_first_line(error)})") from None
    return _arrays(x, y, path)


@dataclass(eq=False)
class InMemoryImages:
    """Images handed over from Python: x as an .npz holds it, y one label per image (None: unlabelled)."""
    x: np.ndarray
    y: np.ndarray | None = None

    @property
    def name(self) -> str:
        """The images in the results' metadata: shape, type and content, so a resume sees the same ones."""
        import hashlib

        x = np.ascontiguousarray(self.x)
        digest = hashlib.sha256(x.tobytes()).hexdigest()[:16]
        return f"array {'×'.join(map(str, x.shape))} {x.dtype} sha256:{digest}"


def _in_memory(images: InMemoryImages) -> Dataset:
    x = np.asarray(images.x)
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise UsageError(f"images: an array of pixels (uint8 0–255 or float in [0,1]), not {x.dtype}")
    try:
        y = [-1] * len(x) if images.y is None else _whole_labels(np.asarray(images.y))
    except (ValueError, TypeError) as error:
        raise UsageError(f"labels: {_first_line(error)}") from None
    dataset = _arrays(x, y, "images", images.name)
    dataset.in_memory = True
    return dataset


def _arrays(x: np.ndarray, y: list, path, source: str | None = None) -> Dataset:
    """A dataset of an .npz's (or Python's) arrays, once their shapes and pixel range are checked;
    `path` names them in messages, `source` (default: the path) in the results."""
    if x.ndim not in (3, 4):
        raise UsageError(f"{path}: x must be N×C×H×W, N×H×W×C or N×H×W, got shape {x.shape}")
    if x.ndim == 3 and x.shape[-1] in (3, 4) and x.shape[-2] > 4:  # never guess: N×H×W with W = 3, or H×W×C?
        raise UsageError(f"{path}: shape {'×'.join(map(str, x.shape))} reads as N×H×W, {x.shape[0]} grey images "
                         f"{x.shape[1]} by {x.shape[2]} pixels; one colour image is a batch of one: "
                         "x[None] (N×H×W×C) or N×C×H×W")
    if np.ndim(y) != 1:
        raise UsageError(f"{path}: y must be a 1-D array with one label per image, got shape {np.shape(y)}")
    if len(y) != len(x):
        raise UsageError(f"{path}: {len(y)} labels for {len(x)} images")
    _check_pixel_range(x, path)
    dataset = Dataset(source or str(path), y, lambda i: x[i])
    dataset.on_grid = on_grid(x)
    return dataset


def on_grid(x: np.ndarray) -> bool:
    """Whether every finite pixel of x (uint8, or float in [0,1]) is k/255: the discrete sampler's inputs.
    Non-finite pixels are left to the per-image check, which makes their images error rows."""
    if x.dtype == np.uint8 or x.size == 0:
        return True
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    return noise.grid_integers(finite) is not None


def _whole_labels(y: np.ndarray) -> list:
    """y as int labels; float labels only where they are whole numbers (NaN is not label -2^63)."""
    if y.dtype.kind not in "biuf":
        raise ValueError(f"y holds {y.dtype} values, not integer labels")
    if y.dtype.kind == "f" and not np.all((y == np.round(y)) & (np.abs(y) < 2**62)):
        raise ValueError("y holds labels that are not whole numbers")
    return y.astype(int).tolist()


def _check_pixel_range(x: np.ndarray, path: Path) -> None:
    """Refuse an array whose values are not pixels in [0,1] (uint8 is 0–255 by definition).

    Floats 0–255 are a mistake about the whole file, not about one image, so they stop the run with
    the range found rather than turning every row into an error. NaN and ±inf are left to the
    per-image check: they make only their own images error rows.
    """
    if x.dtype == np.uint8 or x.size == 0:
        return
    if x.dtype.kind not in "biuf":
        raise UsageError(f"{path}: x holds {x.dtype} values; store uint8 0–255 or float in [0,1]")
    if x.dtype.kind == "f":
        low, high = np.fmin.reduce(x, axis=None), np.fmax.reduce(x, axis=None)  # NaN is skipped
        if not (np.isfinite(low) and np.isfinite(high)):  # an inf somewhere: the range of the rest
            finite = x[np.isfinite(x)]
            if finite.size == 0:
                return
            low, high = finite.min(), finite.max()
    else:
        low, high = x.min(), x.max()
    if low < 0 or high > 1:
        fix = ("scale them to [0,1] (e.g. x / 255) or store uint8 0–255" if x.dtype.kind == "f"
               else "store them as uint8 (0–255) or as float in [0,1]")
        low, high = (f"{float(v):.9g}" if x.dtype.kind == "f" else str(int(v)) for v in (low, high))
        raise UsageError(f"{path}: x holds {x.dtype} values from {low} to {high}, outside [0,1]; {fix}")


def check_labels(dataset: Dataset, num_classes: int | None) -> None:
    """Refuse labels the model cannot predict: each must be a class 0..num_classes-1, or -1 (unlabelled).

    A label beyond the model's classes would make every row of its input count as wrong, which reads
    as a bad model rather than a bad label file. `num_classes` None (not known) checks nothing.
    """
    if num_classes is None:
        return
    bad = [(i, label) for i, label in enumerate(dataset.labels) if label != -1 and not 0 <= label < num_classes]
    if bad:
        index, label = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"{dataset.source}: label {label} of input {index} is outside the model's "
                         f"{num_classes} classes (0–{num_classes - 1}; -1 = unlabelled){more}")


def align_labels(dataset: Dataset, classes: list[str] | None) -> None:
    """Number the dataset's classes as the model does, where its folders are named after them.

    Folder layouts number classes by sorted folder name; a model that declares its classes
    (srtool.classes) may order them otherwise (the video demo: right, left, up, …). When every folder
    name is one of the model's classes, labels follow the model; otherwise they stay as they are.
    """
    names = dataset.class_names
    if not classes or not names or names == list(classes) or not set(names) <= set(classes):
        return
    to_model = [list(classes).index(name) for name in names]
    dataset.labels = [to_model[label] if label >= 0 else label for label in dataset.labels]
    dataset.class_names = list(classes)


def open_images(path: str | Path | InMemoryImages, labels_csv: str | Path | None = None) -> Dataset:
    if isinstance(path, InMemoryImages):
        return _in_memory(path)
    shards = find_shards(path)
    if shards:
        if labels_csv:
            raise UsageError(f"--labels names the labels of a flat folder of images (or of one image); "
                             f"the shards of {path} carry their own labels")
        return open_shards(str(path), shards)
    path = Path(path)
    if not path.exists():
        raise UsageError(f"images not found: {path}")
    name = path.name.lower()
    flat = path.is_dir() and not class_folders(path)
    if labels_csv and not (flat or path.suffix.lower() in IMAGE_SUFFIXES):
        raise UsageError(f"--labels names the labels of a flat folder of images (or of one image); {path} "
                         "carries its own labels (class folders or the dataset file)")
    if path.is_dir():
        dataset = _folder(path, Path(labels_csv) if labels_csv else None)
    elif name.endswith(".npz"):
        dataset = _npz(path)
    elif "idx3" in name or name.endswith((".idx", ".idx.gz")):
        dataset = _idx(path)
    elif name.endswith(".bin"):
        dataset = _cifar_binary(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        known = _read_labels_csv(Path(labels_csv)) if labels_csv else {}
        dataset = Dataset(str(path), [known.get(path.name, known.get(str(path), -1))],
                          lambda i: _read_image_file(str(path)), [str(path)])
    elif name.startswith(("data_batch", "test_batch")):
        dataset = _cifar_python(path)
    else:
        raise UsageError(f"{path}: unknown dataset format (expected a folder, an image, .npz, "
                         "IDX, CIFAR-10 python/binary batches, or Parquet/tar shards)")
    if len(dataset) == 0:
        raise UsageError(f"{path}: no images found")
    return dataset


# -- shards: Parquet (Hugging Face layout) and WebDataset tar -----------------------------------------

SHARD_SUFFIXES = (".parquet", ".tar")


def find_shards(path: str | Path) -> list[Path]:
    """The shards `path` names, in name order: one shard file, a glob of them, or a folder holding
    shards and no images or class folders; [] where `path` is something else."""
    text = str(path)
    if any(c in text for c in "*?[") and not Path(text).exists():
        matches = sorted(Path(p) for p in glob.glob(text))
        if not matches:
            raise UsageError(f"images not found: no file matches {text}")
        others = [p for p in matches if p.suffix.lower() not in SHARD_SUFFIXES or not p.is_file()]
        if others:
            raise UsageError(f"{text}: a glob of --images must match shards (.parquet, .tar) only, not {others[0]}")
        return matches
    path = Path(text)
    if path.is_file():
        return [path] if path.suffix.lower() in SHARD_SUFFIXES else []
    if path.is_dir() and not class_folders(path):
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if files and any(p.suffix.lower() in SHARD_SUFFIXES for p in files) \
                and not any(_is_image(p) for p in files):
            return [p for p in files if p.suffix.lower() in SHARD_SUFFIXES]
    return []


class _ParquetShard:
    """Labels read when opened; image bytes read by row group when an input is asked for (the last
    row group kept, as inputs are asked for in order)."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(path)
            names = self.file.schema_arrow.names
            if "image" not in names:
                raise UsageError(f"{path}: a Parquet shard needs an `image` column of {{bytes, path}} "
                                 f"(columns: {', '.join(names)})")
            rows = self.file.metadata.num_rows
            labels = (self.file.read(columns=["label"]).column("label").to_pylist() if "label" in names
                      else [None] * rows)
        except UsageError:
            raise
        except Exception as error:  # pyarrow's errors for damaged files vary
            raise UsageError(f"{path}: not a readable Parquet shard ({_first_line(error)})") from None
        self.labels = [-1 if label is None else _whole_label(label, path) for label in labels]
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = np.cumsum([0] + sizes)
        self.names = [f"{path.name}#{row}" for row in range(rows)]
        self._lock = threading.Lock()
        self._cached: tuple[int, list] | None = None

    def read(self, row: int) -> Decoded:
        group = int(np.searchsorted(self.starts, row, side="right") - 1)
        with self._lock:
            if self._cached is None or self._cached[0] != group:
                self._cached = (group, self.file.read_row_group(group, columns=["image"]).column("image").to_pylist())
            cell = self._cached[1][row - int(self.starts[group])]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise ValueError("the image cell holds no bytes")
        return decode_image(data)


class _TarShard:
    """A WebDataset tar: samples grouped by key (the member name up to its first dot), in the tar's
    order; labels from `key.cls` read when opened, image bytes read at their offset when asked for."""

    def __init__(self, path: Path):
        import tarfile

        self.path = path
        order, images, labels = [], {}, {}
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, _, suffix = base.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    if "." + suffix.lower() in IMAGE_SUFFIXES and key not in images:
                        order.append(key)
                        images[key] = (member.offset_data, member.size)
                    elif suffix.lower() == "cls":
                        labels[key] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UsageError(f"{path}: not a readable tar shard ({_first_line(error)})") from None
        self.names = [f"{path.name}:{key}" for key in order]
        self._where = [images[key] for key in order]
        self.labels = [self._label(labels.get(key), key) for key in order]

    def _label(self, raw: bytes | None, key: str) -> int:
        if raw is None:
            return -1
        try:
            return int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise UsageError(f"{self.path}: {key}.cls holds {raw[:20]!r}, not a whole-number label") from None

    def read(self, row: int) -> Decoded:
        offset, size = self._where[row]
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return decode_image(handle.read(size))


def _whole_label(value, path: Path) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise UsageError(f"{path}: the `label` column must hold whole numbers, not {shown(value)}")


def open_shards(source: str, shards: list[Path]) -> Dataset:
    """The shards as one dataset, indices continuing from one shard to the next."""
    opened = [_ParquetShard(p) if p.suffix.lower() == ".parquet" else _TarShard(p) for p in shards]
    where = [(shard, row) for shard in opened for row in range(len(shard.labels))]
    labels = [label for shard in opened for label in shard.labels]
    paths = [name for shard in opened for name in shard.names]

    def read(index: int) -> Decoded:
        shard, row = where[index]
        return shard.read(row)

    return Dataset(source, labels, read, paths)


def stored_channels(dataset: Dataset, index: int) -> int:
    """The channels input `index` has as stored, before conform gives the model its own count."""
    raw = dataset._read(index)
    image = raw.image if isinstance(raw, Decoded) else raw
    return 1 if np.ndim(image) == 2 else to_unit_chw(np.asarray(image)).shape[0]


def load_images(path: str | Path, image_size: int | None = None, channels: int | None = None,
                labels: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image of `path` (any layout open_images reads) as the command line loads it: float32
    N×C×H×W in [0,1] with `channels` (1: grey by luma, 3: grey copied to RGB; None: as stored) and,
    with `image_size`, the shorter side resized to it and the centre cropped square. Also the labels
    (-1: unlabelled). An image that cannot be read, or sizes that differ, stop it with one line."""
    whole = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if image_size is not None and not (whole and 0 < image_size <= 16_384):
        raise UsageError(f"--image-size must be a positive whole number, not {shown(image_size)}")
    if not (channels is None or (isinstance(channels, (int, np.integer)) and channels in (1, 3))):
        raise UsageError(f"channels must be 1, 3 or None, not {shown(channels)}")
    dataset = open_images(path, labels)
    dataset.channels, dataset.size = channels, None if image_size is None else int(image_size)
    images = []
    for index in range(len(dataset)):
        item = dataset[index]
        if item.image is None:
            raise UsageError(f"{item.path or f'{path} input {index}'}: {item.error}")
        if images and item.image.shape != images[0].shape:
            raise UsageError(f"{path}: images differ in shape ({'×'.join(map(str, images[0].shape))} and "
                             f"{'×'.join(map(str, item.image.shape))} at {item.path or index}); pass --image-size "
                             "to resize them on load, or --channels")
        images.append(item.image)
    return np.stack(images), np.asarray(dataset.labels, dtype=np.int64)
