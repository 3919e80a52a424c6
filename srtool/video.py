"""Videos: reading with decord (or OpenCV where decord has no wheels), dataset layouts, the sub-video plan and the video sampling graph.

A video classifier f takes one chunk of m frames (C×m×H×W). The base classifier of the paper runs f
on the non-overlapping m-frame chunks of a sub-video of t frames and averages their logits;
Smooth-Reduce cuts k overlapping sub-videos (starts 0, S, 2S, …) from every noisy copy of the video
and reduces the k chunk-averaged logit vectors by mean or max. Sub-videos are the video's "patches".
Standard randomized smoothing of the whole video is the layout with no sub-videos: one view, the
video's ⌊L/m⌋ chunks averaged (trailing frames unused), exactly the MARS test procedure.

Varying lengths. Videos differ in length L, and the layout (k, chunk positions) depends on L, so
there is one `VideoPlan` per distinct frame count, made on demand and cached by the run's
`VideoLayout`. The sampling graph does *not* depend on L: the frame indices of all chunks,
shape (k, chunks, m), are a graph input, and k and the chunk count are read from that input's shape
at run time. So one ONNX Runtime session serves every length (a large model such as MARS'
ResNeXt-101 is loaded once), and clipping or padding videos to one length is never needed.

Noise (DESIGN §3). `input` space: one Gaussian draw over the frames of each noisy copy, shared by
every sub-video that covers them; the graph gathers the chunks from the noisy video, so the smoothed
function is Cohen's on the video itself and the radius needs no factor. `patch` space: independent
noise per sub-video, i.e. on A x with A stacking the temporal crops. AᵀA is diagonal, holding how
many times each frame is selected, so ‖A‖₂² is exactly the largest number of sub-videos covering
one frame and the radius is divided by ‖A‖₂. Frames are resized on load (no resize in the graph), so
certificates hold for the loaded video, in [0,1] pixel units.

Memory. The host holds the clean video and, per ONNX Runtime call, a batch of noisy copies; with
`--batch auto` the number of copies per call shrinks for long videos (engine.VoteCounter), so a
long video never needs more than a bounded batch of copies, never all n.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from .data import Dataset, Item, _read_labels_csv, align_labels, class_folders  # noqa: F401 (re-exported)
from .errors import InputError, UsageError
from .graph import NOISY, OFFSETS, Builder, assemble, check_per_copy
from .model import Model

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
NOISE_SPACES = ("input", "patch")  # no `resized`: frames are resized on load, not in the graph
REDUCERS = ("mean", "max")
SHORT_POLICIES = ("error", "loop")
DECODE_BLOCK = 64  # frames decoded and resized at a time, so a long 4K video never sits in memory raw
VIEWS = "srtool/views"  # graph tensors holding k and the chunk count, read from the offsets' shape
CHUNKS = "srtool/chunks"


# -- reading -----------------------------------------------------------------------------------------

class VideoError(Exception):
    """A video that cannot be read; it becomes one error row."""


def _decord_reason(error: Exception) -> str:
    """decord's messages start with a time stamp and a C++ source location; keep the reason."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", text)
    return text[:160]


def fit_frames(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) uint8 → (N, h, w, C) uint8 the way MARS prepares test clips.

    MARS (dataset/preprocess_data.py, test branch) scales the shorter side to the model's size, the
    longer side to int(size · long / short), then takes the centre crop at round((long − size) / 2).
    For a non-square model the side that binds is scaled exactly and the other truncated the same way.
    MARS resizes with PIL's bilinear filter, which antialiases when shrinking; OpenCV's INTER_AREA is
    the antialiased counterpart (INTER_LINEAR when enlarging), as srtool's image loader does.
    """
    n, height, width, channels = frames.shape
    h, w = size_hw
    if height * w <= width * h:  # the height is the relatively shorter side: it lands on h exactly
        new_h, new_w = h, max(w, int(width * h / height))
    else:
        new_h, new_w = max(h, int(height * w / width)), w
    if (new_h, new_w) != (height, width):
        interpolation = cv2.INTER_AREA if new_h < height else cv2.INTER_LINEAR
        resized = np.empty((n, new_h, new_w, channels), dtype=np.uint8)
        for i, frame in enumerate(frames):  # frame by frame: INTER_AREA takes at most 4 channels
            resized[i] = cv2.resize(frame, (new_w, new_h), interpolation=interpolation).reshape(new_h, new_w, channels)
        frames = resized
    top, left = int(round((new_h - h) / 2)), int(round((new_w - w) / 2))
    return frames[:, top:top + h, left:left + w]


def _decord_blocks(reader, frames: int):
    for start in range(0, frames, DECODE_BLOCK):
        yield reader.get_batch(list(range(start, min(frames, start + DECODE_BLOCK)))).asnumpy()


def _opencv_blocks(path: str):
    """The same frames through OpenCV's FFmpeg reader (BGR, converted to RGB), block by block."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise VideoError("unreadable: OpenCV cannot open it")
    try:
        block = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            block.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if len(block) == DECODE_BLOCK:
                yield np.stack(block)
                block = []
        if block:
            yield np.stack(block)
    finally:
        capture.release()


@contextlib.contextmanager
def _c_stderr_muted():
    """Mute file descriptor 2 while decord opens a file: its C++ logger prints "ERROR opening …"
    there before it raises, and srtool reports the raised reason itself, on one line or in the row."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decord_module():
    """decord where it is installed (it has wheels for x86-64 Linux and Windows only), else None."""
    try:
        import decord
    except ImportError:
        return None
    decord.logging.set_level(decord.logging.QUIET)
    return decord


def read_video(path: str, size_hw: tuple[int, int] | None, channels: int = 3) -> np.ndarray:
    """All frames of a video as float32 C×T×H×W in [0,1] RGB, fitted to `size_hw` (None: as stored).

    Frames come from decord when it is installed, else from OpenCV's FFmpeg reader (the platforms
    without decord wheels); both give RGB uint8 (T, H, W, 3) with the same pixels (a test). Frames are
    decoded in blocks and fitted block by block, so memory holds the fitted video plus one raw block.
    decord 0.6 cannot copy out frames of some widths (8, 16, 24, 48, 72 px among others: "The size
    must exactly match"); those files go to OpenCV too. Raises VideoError with a one-line reason.
    """
    file = Path(path)
    if not file.is_file():
        raise VideoError("file not found")
    if file.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")

    def fitted(blocks):
        out = []
        for block in blocks:
            out.append(fit_frames(block, size_hw) if size_hw is not None else block)
        return np.concatenate(out) if out else None

    decord = _decord_module()
    reason = None
    if decord is not None:
        try:
            with _c_stderr_muted():
                reader = decord.VideoReader(str(file), ctx=decord.cpu(0))
            frames = len(reader)
        except Exception as error:  # decord raises DECORDError/RuntimeError with multi-line texts
            raise VideoError(f"unreadable: decord cannot open it ({_decord_reason(error)})") from None
        if frames == 0:
            raise VideoError("no frames")
        try:
            return _to_unit_ctwh(fitted(_decord_blocks(reader, frames)), channels)
        except Exception as error:
            reason = _decord_reason(error)
            if "size must exactly match" not in reason:
                raise VideoError(f"unreadable: decoding failed ({reason})") from None
        del reader
    try:
        video = fitted(_opencv_blocks(str(file)))
    except VideoError:
        raise
    except Exception as error:
        prefix = f"{reason}; " if reason else ""
        raise VideoError(f"unreadable: decoding failed ({prefix}OpenCV: {error})") from None
    if video is None:
        raise VideoError(f"unreadable: decoding failed ({reason})" if reason else "no frames")
    return _to_unit_ctwh(video, channels)


def _to_unit_ctwh(video: np.ndarray, channels: int) -> np.ndarray:
    """RGB uint8 (T, H, W, 3) → float32 (C, T, H, W) in [0,1]: RGB as is, or ITU-R 601 luma for C=1."""
    t, h, w, _ = video.shape
    out = np.empty((channels, t, h, w), dtype=np.float32)
    if channels == 1:
        out[0] = video @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        for c in range(3):
            out[c] = video[..., c]
    out *= np.float32(1 / 255)
    return out


# -- dataset layouts ---------------------------------------------------------------------------------

class VideoDataset(Dataset):
    """Videos read lazily on access; one unreadable file becomes one error row, not a failed run."""

    def __init__(self, source: str, labels: list[int], paths: list[str],
                 class_names: list[str] | None = None, split: str | None = None):
        super().__init__(source, labels, self._read, paths, class_names)
        self.split = split  # the list file that chose the videos (UCF-101), for the run's record
        self.frame_hw: tuple[int, int] | None = None  # set by the caller: what the model takes
        self.channels = 3

    def _read(self, index: int) -> np.ndarray:
        video = read_video(self.paths[index], self.frame_hw, self.channels or 3)
        if self.grid and (self.channels or 3) == 1:  # --noise discrete: grey frames (luma) onto the 1/255 grid
            video = np.divide(np.rint(video * np.float32(255)), np.float32(255), dtype=np.float32)
        return video

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        try:
            video = self._read(index)
        except VideoError as error:
            return Item(index, self.labels[index], None, path, str(error))
        except Exception as error:  # anything else about one file is still that file's problem
            return Item(index, self.labels[index], None, path, f"unreadable: {error}".splitlines()[0])
        return Item(index, self.labels[index], video, path)


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _find_class_index(root: Path, split: Path | None) -> Path | None:
    """UCF-101's classInd.txt: beside the split file, in the root, or in a ucfTrainTestlist folder."""
    candidates = ([split.parent / "classInd.txt"] if split else []) + [
        root / "classInd.txt", root / "ucfTrainTestlist" / "classInd.txt",
        root.parent / "ucfTrainTestlist" / "classInd.txt"]
    return next((p for p in candidates if p.is_file()), None)


def _read_class_index(path: Path) -> list[str]:
    """`1 ApplyEyeMakeup` lines (1-based) → class names in label order."""
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise UsageError(f"{path}:{number}: expected '<index> <class>', got {line.strip()!r}")
        entries[int(fields[0])] = fields[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise UsageError(f"{path}: class indices must run 1..{len(entries)}")
    return [entries[i] for i in range(1, len(entries) + 1)]


def _resolve_split(split: str, root: Path) -> Path:
    candidates = [Path(split), root / split, root / "ucfTrainTestlist" / split,
                  root.parent / "ucfTrainTestlist" / split]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UsageError(f"split list not found: {split}")
    return found


def _find_ignoring_case(root: Path, relative: str, listings: dict) -> Path:
    """root/relative, or the entry that matches it without regard to case (else root/relative)."""
    exact = root / relative
    if exact.exists():
        return exact
    found = root
    for part in relative.split("/"):
        if found not in listings:
            listings[found] = ({p.name.lower(): p.name for p in found.iterdir()} if found.is_dir() else {})
        name = listings[found].get(part.lower())
        if name is None:
            return exact
        found = found / name
    return found


def _ucf101(root: Path, class_index: Path | None, split: Path | None) -> VideoDataset:
    """Class folders named in classInd.txt; the videos listed in the split file (testlist01.txt)."""
    if class_index is not None:
        classes = _read_class_index(class_index)
    else:
        classes = class_folders(root)
    # UCF-101 spells some classes with other capitals in file names (HandStandPushups), so names
    # are matched without regard to case.
    label_of = {name.lower(): label for label, name in enumerate(classes)}
    paths, labels = [], []
    listings: dict[Path, dict[str, str]] = {}
    if split is not None:
        for number, line in enumerate(split.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            relative = fields[0].replace("\\", "/")
            folder = relative.split("/")[0] if "/" in relative else None
            if folder is not None and folder.lower() in label_of:
                label = label_of[folder.lower()]
            elif len(fields) > 1 and fields[1].lstrip("-").isdigit():
                label = int(fields[1]) - 1  # trainlist lines carry the 1-based class index
            else:
                raise UsageError(f"{split}:{number}: class of {relative!r} is not in the class list")
            # UCF-101 mixes capitals between list, folder and file names (HandstandPushups vs
            # v_HandStandPushups_…); a listed file missing even without regard to case is an error row.
            paths.append(str(_find_ignoring_case(root, relative, listings)))
            labels.append(label)
    else:
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).rglob("*") if _is_video(p)) if (root / name).is_dir() else []
            paths += [str(p) for p in files]
            labels += [label] * len(files)
    return VideoDataset(str(root), labels, paths, classes, str(split) if split else None)


def _video_folder(root: Path, labels_csv: Path | None) -> VideoDataset:
    """Class sub-folders (labels by sorted folder name), or a flat folder with an optional CSV."""
    classes = class_folders(root)
    if classes:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).rglob("*") if _is_video(p))
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        return VideoDataset(str(root), labels, paths, classes)
    files = sorted(p for p in root.iterdir() if _is_video(p))
    known = _read_labels_csv(labels_csv) if labels_csv else {}
    labels = [known.get(p.name, known.get(str(p), -1)) for p in files]
    return VideoDataset(str(root), labels, [str(p) for p in files])


def open_videos(path: str | Path, labels_csv: str | Path | None = None,
                split: str | None = None) -> VideoDataset:
    """A video file, a UCF-101 tree (classInd.txt + split list), class folders, or a flat folder."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"videos not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UsageError(f"{path}: not a video file (expected one of {', '.join(sorted(VIDEO_SUFFIXES))}) "
                             "or a folder")
        if labels_csv or split:
            raise UsageError("--labels and --split apply to folders of videos")
        return VideoDataset(str(path), [-1], [str(path)])
    if labels_csv is not None and not Path(labels_csv).is_file():
        raise UsageError(f"labels file not found: {labels_csv}")
    split_path = _resolve_split(split, path) if split else None
    class_index = _find_class_index(path, split_path)
    if split_path is None and class_index is not None and (class_index.parent / "testlist01.txt").is_file():
        split_path = class_index.parent / "testlist01.txt"  # UCF-101's first test split, as the paper
    if labels_csv is not None and (class_index is not None or split_path is not None or class_folders(path)):
        raise UsageError(f"--labels names the labels of a flat folder of videos; {path} carries its own labels "
                         "(class folders or a UCF-101 class list)")
    if class_index is not None or split_path is not None:
        dataset = _ucf101(path, class_index, split_path)
    else:
        dataset = _video_folder(path, Path(labels_csv) if labels_csv else None)
    if len(dataset) == 0:
        raise UsageError(f"{path}: no videos found ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return dataset


# -- plan --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoLayout:
    """How every video of a run is cut: the run-level half of the plan, independent of length."""

    frame_shape: tuple[int, int, int]  # C, H, W of the model's frames
    chunk: int  # m: frames per model input
    subvideo: int | None = None  # t: frames per sub-video; None = the whole video (standard RS)
    stride: int | None = None  # frames between sub-video starts; None = t // 2
    reduce: str = "mean"
    noise_space: str = "input"
    short: str = "error"  # a video shorter than one sub-video (or chunk): error row, or loop it
    _plans: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.noise_space not in NOISE_SPACES:
            raise UsageError(f"--noise-space for videos must be one of {', '.join(NOISE_SPACES)}")
        if self.reduce not in REDUCERS:
            raise UsageError(f"--reduce must be one of {', '.join(REDUCERS)}")
        if self.short not in SHORT_POLICIES:
            raise UsageError(f"--short must be one of {', '.join(SHORT_POLICIES)}")
        if self.chunk < 1:
            raise UsageError("--chunk must be at least 1")
        if self.subvideo is None:
            if self.stride is not None:
                raise UsageError("--stride needs --subvideo (the whole video has one view)")
        else:
            if self.subvideo < self.chunk or self.subvideo % self.chunk:
                raise UsageError(f"--subvideo {self.subvideo} must be a multiple of the chunk ({self.chunk} frames)")
            if self.stride is not None and self.stride < 1:
                raise UsageError("--stride must be at least 1")

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else max(1, (self.subvideo or 0) // 2)

    @property
    def min_frames(self) -> int:
        """The shortest video the layout takes without looping: one sub-video, or one chunk."""
        return self.subvideo or self.chunk

    def frame_index(self, frames: int) -> np.ndarray:
        """Frame numbers of every chunk of every sub-video, shape (k, chunks, m), int64.

        Sub-videos start at 0, S, 2S, … while they fit; frames after the last one are not used (the
        same as MARS's trailing frames that do not fill a chunk). With `short="loop"` a video shorter
        than one sub-video (or chunk) is read cyclically from its start, as MARS's LoopPadding does.
        """
        what = "sub-video" if self.subvideo else "chunk"
        if frames < 1:
            raise InputError("the video has no frames", {"frames": frames, "subvideos": 0})
        if frames < self.min_frames and self.short == "error":
            raise InputError(f"the video has {frames} frames, fewer than one {what} ({self.min_frames}); "
                             "--short loop repeats it from its start as MARS does",
                             {"frames": frames, "subvideos": 0})
        span = max(frames, self.min_frames)  # a looped video counts as exactly one sub-video long
        if self.subvideo is None:
            count = span // self.chunk
            index = np.arange(count * self.chunk).reshape(1, count, self.chunk)
        else:
            starts = np.arange(0, span - self.subvideo + 1, self.step)
            index = (starts[:, None] + np.arange(self.subvideo)).reshape(len(starts), -1, self.chunk)
        return (index % frames).astype(np.int64)

    def plan(self, frames: int) -> VideoPlan:
        """The plan for videos of this many frames (cached: videos of one length share it)."""
        if frames not in self._plans:
            self._plans[frames] = VideoPlan(self, frames)
        return self._plans[frames]

    def for_input(self, video: np.ndarray) -> VideoPlan:
        """The plan for one video (C×T×H×W); the pipeline asks this for every input."""
        return self.plan(video.shape[1])

    @property
    def probe(self) -> VideoPlan:
        """The plan of the shortest video the layout takes, for the engine's start-up check."""
        return self.plan(self.min_frames)

    @property
    def view_shape(self) -> tuple[int, int, int, int]:
        c, h, w = self.frame_shape
        return (c, self.chunk, h, w)

    def describe(self) -> dict:
        return {
            "kind": "video",
            "frame_shape": list(self.frame_shape),
            "chunk": self.chunk,
            "subvideo": self.subvideo,
            "stride": self.step if self.subvideo else None,
            "short": self.short,
            "reduce": self.reduce,
            "noise_space": self.noise_space,
            # patch space: the factor depends on how many sub-videos cover a frame, which can
            # differ between lengths (short or looped videos); every row records its own.
            "radius_factor": 1.0 if self.noise_space == "input" else None,
        }


class VideoPlan:
    """The plan for videos of one length: the duck-typed interface of `plan.Plan` for the pipeline."""

    sampling = "dense"  # sub-video positions follow from the length; nothing is drawn

    def __init__(self, layout: VideoLayout, frames: int):
        self.layout = layout
        self.frames = frames
        self.index = layout.frame_index(frames)  # raises InputError for too short a video
        self.index.flags.writeable = False

    # -- layout --------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        c, h, w = self.layout.frame_shape
        return (c, self.frames, h, w)

    @property
    def patches(self) -> int:
        return self.index.shape[0]

    @property
    def chunks(self) -> int:
        return self.index.shape[1]

    @property
    def reduce(self) -> str:
        return self.layout.reduce

    @property
    def noise_space(self) -> str:
        return self.layout.noise_space

    @property
    def patch_hw(self) -> tuple[int, int]:
        return self.layout.frame_shape[1:]

    @property
    def dense_offsets(self) -> np.ndarray:
        return self.index

    def offsets(self, seed: int, index: int) -> np.ndarray:
        return self.index

    def for_input(self, video: np.ndarray) -> VideoPlan:
        return self.layout.for_input(video)

    @property
    def views_per_copy(self) -> int:
        """Model inputs (chunks) per noisy copy: k sub-videos × their chunks."""
        return self.patches * self.chunks

    @property
    def view_shape(self) -> tuple[int, int, int, int]:
        return self.layout.view_shape

    @property
    def columns(self) -> dict:
        """Extra result columns: frames read and sub-videos used."""
        return {"frames": self.frames, "subvideos": self.patches}

    # -- noise space ---------------------------------------------------------------------------
    @property
    def noise_shape(self) -> tuple[int, ...]:
        if self.noise_space == "input":
            return self.input_shape
        c, m, h, w = self.view_shape
        return (self.views_per_copy, c, m, h, w)  # every chunk of every sub-video, stacked

    def noise_point(self, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The video itself (input space), or A x: its sub-videos' chunks stacked (patch space)."""
        if self.noise_space == "input":
            return np.ascontiguousarray(x, dtype=np.float32)
        c, m, h, w = self.view_shape
        crops = x[:, offsets]  # (C, k, chunks, m, H, W)
        return np.ascontiguousarray(crops.transpose(1, 2, 0, 3, 4, 5)).reshape(-1, c, m, h, w)

    def radius_factor(self, offsets: np.ndarray) -> float:
        """1 for input space; 1/‖A‖₂ = 1/sqrt(most times one frame is used) for patch space (exact)."""
        if self.noise_space == "input":
            return 1.0
        return float(1.0 / np.sqrt(np.bincount(offsets.ravel()).max()))

    @property
    def radius_factor_varies(self) -> bool:
        return False  # within one length the factor is fixed; across lengths see VideoLayout

    def describe(self) -> dict:
        return self.layout.describe()


def make_layout(model: Model, subvideo: int | None, chunk: int | None, stride: int | None,
                reduce: str, noise_space: str, short: str) -> VideoLayout:
    """The layout for `model` (N×C×T×H×W) from the command-line options, checked."""
    shape = model.input_shape
    if shape is not None and len(shape) == 3:
        raise UsageError(f"{model.path.name} takes images (N×C×H×W); use srtool certify / predict")
    if shape is None:
        raise UsageError(f"{model.path.name} does not declare its input size; add srtool.input_shape "
                         "'C,T,H,W' to its metadata")
    c, t, h, w = shape
    if c not in (1, 3):
        raise UsageError(f"{model.path.name} takes {c}-channel frames; srtool reads RGB (3) or grey (1) videos")
    dims = model.proto.graph.input
    graph_input = next(i for i in dims if i.name == model.input_name)
    time_dim = graph_input.type.tensor_type.shape.dim[2]
    fixed_t = time_dim.dim_value if time_dim.HasField("dim_value") and time_dim.dim_value > 0 else None
    if chunk is None:
        chunk = t
    elif fixed_t is not None and chunk != fixed_t:
        raise UsageError(f"--chunk {chunk} does not fit the model, which takes {fixed_t} frames")
    return VideoLayout(frame_shape=(c, h, w), chunk=chunk, subvideo=subvideo, stride=stride,
                       reduce=reduce, noise_space=noise_space, short=short)


# -- sampling graph ----------------------------------------------------------------------------------

def sampling_graph(models: Model | list[Model], layout: VideoLayout,
                   consensus: int | None = None) -> onnx.ModelProto:
    """noisy videos + chunk frame indices → k sub-videos × chunks → model(s) → chunk mean → reduce → votes.

    Input space: NOISY is (B, C, T, H, W) with T free; OFFSETS (k, chunks, m) are frame numbers, and
    one Gather cuts every chunk of every sub-video. Patch space: NOISY already holds the chunks,
    (B, k·chunks, C, m, H, W). Either way the model sees (B·k·chunks, C, m, H, W), copy-major, and
    the tail (graph.assemble) takes k and the chunk count from OFFSETS' shape, so videos of every
    length run through this one graph. Several models form an ensemble, with optional K-consensus
    (graph.assemble): each member averages its own chunk logits, then all (member, sub-video) pairs
    are reduced together.
    """
    c, m, h, w = layout.view_shape
    check_per_copy(models, layout.view_shape)
    if layout.noise_space == "input":
        noisy_dims = ["batch", c, "frames", h, w]
    else:
        noisy_dims = ["batch", "views", c, m, h, w]
    inputs = [helper.make_tensor_value_info(NOISY, TensorProto.FLOAT, noisy_dims),
              helper.make_tensor_value_info(OFFSETS, TensorProto.INT64, ["subvideos", "chunks", m])]

    def head(b: Builder, model_input: str) -> None:
        shape = b.node("Shape", [OFFSETS])
        b.node("Slice", [shape, b.const([0]), b.const([1])], VIEWS)
        b.node("Slice", [shape, b.const([1]), b.const([2])], CHUNKS)
        if layout.noise_space == "input":
            chunks = b.node("Gather", [NOISY, OFFSETS], axis=2)  # (B, C, k, chunks, m, H, W)
            chunks = b.node("Transpose", [chunks], perm=[0, 2, 3, 1, 4, 5, 6])
        else:
            chunks = NOISY
        b.node("Reshape", [chunks, b.const([-1, c, m, h, w])], model_input)

    return assemble(models, inputs, head, VIEWS, layout.reduce, chunks=CHUNKS, consensus=consensus)


def method_tag(layout: VideoLayout) -> str:
    """Short name for default output files: video-rs16, video-mean32x16s8-input, …"""
    if layout.subvideo is None:
        return f"video-rs{layout.chunk}"
    return f"video-{layout.reduce}{layout.subvideo}x{layout.chunk}s{layout.step}-{layout.noise_space}"
