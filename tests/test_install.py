"""`srtool export` from a non-editable install (issue 32 §2): the wheel ships `exporters`, and an
export run from anywhere writes into the current directory. The venv sees the system's packages
(torch, onnxruntime, …) but imports srtool and exporters from the install only."""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]

NET = '''
from torch import nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
'''


def test_export_from_a_non_editable_install(tmp_path):
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "tests", "docs", "benchmarks", "build", "*.egg-info", "__pycache__", "*.parquet*", "models",
        "ray_results", ".venv*"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "-q", str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "mynet.py").write_text(NET)
    clean = {"PATH": str(python.parent), "HOME": str(tmp_path)}  # no PYTHONPATH: the installed copy only
    where = subprocess.run([str(python), "-c", "import srtool, exporters; print(srtool.__file__, exporters.__file__)"],
                           cwd=work, env=clean, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.count(str(env_dir)) == 2, where
    srtool = [str(python), "-m", "srtool"]
    shown = subprocess.run(srtool + ["export", "--help"], cwd=work, env=clean, capture_output=True, text=True)
    assert shown.returncode == 0 and "factory" in shown.stdout and "smoothing" in shown.stdout, shown.stderr
    done = subprocess.run(srtool + ["export", "factory", "--factory", "mynet:make", "--input-shape", "1,4,4"],
                          cwd=work, env=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "make.onnx").is_file()  # into the current directory, not the package


def test_export_without_torch_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from cli_helpers import srtool

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, _, err = srtool("export", "smoothing", "checkpoint.pth.tar", capsys=capsys)
    assert code == 2 and "pip install 'srtool[export]'" in err and len(err.strip().splitlines()) == 1
