"""Installing everywhere pip does: dependency markers per platform, and the two video readers agree."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

import srtool.video as video

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path(video.__file__).parent / "assets" / "video_demo"

# packaging.markers environments of the platforms srtool must install on
PLATFORMS = {
    "macOS arm64": {"platform_system": "Darwin", "platform_machine": "arm64", "sys_platform": "darwin"},
    "Linux aarch64": {"platform_system": "Linux", "platform_machine": "aarch64", "sys_platform": "linux"},
    "Linux x86_64": {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"},
    "Windows x86_64": {"platform_system": "Windows", "platform_machine": "AMD64", "sys_platform": "win32"},
}


def _installed_names(environment: dict) -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = set()
    for line in deps:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            names.add(requirement.name)
    return names


@pytest.mark.parametrize("platform", PLATFORMS)
def test_one_onnxruntime_and_a_video_reader_per_platform(platform):
    names = _installed_names(PLATFORMS[platform])
    runtimes = names & {"onnxruntime", "onnxruntime-gpu"}
    assert len(runtimes) == 1, runtimes
    gpu_wheels = platform in ("Linux x86_64", "Windows x86_64")
    assert runtimes == ({"onnxruntime-gpu"} if gpu_wheels else {"onnxruntime"})
    assert ("decord" in names) == gpu_wheels  # decord has wheels exactly there
    assert "opencv-python-headless" in names  # the reader where decord is missing


def test_opencv_reader_gives_decords_frames(monkeypatch):
    pytest.importorskip("decord")
    files = sorted(DEMO.glob("*/*.mp4"))
    assert len(files) == 24
    with_decord = [video.read_video(str(f), None) for f in files]
    monkeypatch.setattr(video, "_decord_module", lambda: None)
    for file, expected in zip(files, with_decord):
        got = video.read_video(str(file), None)
        assert got.shape == expected.shape, file
        np.testing.assert_array_equal(got, expected, err_msg=str(file))


def test_opencv_reader_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_decord_module", lambda: None)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(video.VideoError, match="unreadable"):
        video.read_video(str(bad), (8, 8))
