"""--engine ray (issue 8): the local engine's table row for row, dead workers, a killed driver, no Ray.

Every run starts its own local Ray with two workers of one CPU each, its files under a short temporary
RAY_TMPDIR (Ray's unix sockets must fit in 107 bytes) and HOME pointed at an empty folder, so that
nothing of Ray's (session files, auth token) lands in the user's home; usage stats off, no dashboard.
Ray processes are found by that RAY_TMPDIR in their environment, and a test fails if any outlives it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from srtool.results import read_results
from cli_helpers import read, srtool

REPO = Path(__file__).resolve().parents[1]
AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

# Ray is not imported here: srtool must be the first to import it (it sets up authentication first).
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (the dev extra)")


def rows(table):
    return table.drop(["time_s"]).to_pylist()


def ray_processes(marker: str) -> list[int]:
    """Pids of the processes whose environment holds this test's RAY_TMPDIR (Ray's, started here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"RAY_TMPDIR={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def end_processes(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_env(monkeypatch):
    """A private RAY_TMPDIR and HOME; no usage stats; the auth variables restored afterwards."""
    tmp = tempfile.mkdtemp(prefix="srt-ray-", dir="/tmp")
    home = Path(tmp) / "home"
    home.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("SRTOOL_RAY_FAULT", raising=False)
    saved = {name: os.environ.pop(name) for name in AUTH if name in os.environ}  # srtool's own token path
    yield {"tmp": tmp, "home": home}
    for name in AUTH:  # srtool sets these for its local Ray; leave the process as it was
        os.environ.pop(name, None)
    os.environ.update(saved)
    deadline = time.monotonic() + 15  # ray.shutdown() does not wait for its processes to exit
    while (left := ray_processes(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    end_processes(left)
    shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"Ray processes outlived the test: {left}"
    assert not (home / ".ray").exists(), "Ray wrote into the home folder"


@pytest.fixture
def linear_data(prototype_run):
    """A 10-class linear model on 1×28×28 and 40 labelled images it classifies well."""
    model, data = prototype_run(40)
    return ["--model", model, "--images", data]


@needs_ray
def test_ray_table_equals_local_table(tmp_path, ray_env, capfd):
    """The shipped model and sample (the defaults): same rows, same metadata."""
    common = ["certify", "--n0", 20, "--n", 200, "--max", 24, "--seed", 3]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, "--quiet", capsys=capfd)[0] == 0
    code, stdout, err = srtool(*common, "--out", distributed, "--engine", "ray", "--workers", 2, capsys=capfd)
    assert code == 0, err
    assert "2 workers" in err and "ACR" in stdout  # the same progress and summary as the local engine
    assert "Token authentication" not in err  # Ray's warning: srtool gives its local Ray a token
    (a, config_a), (b, config_b) = read(local), read(distributed)
    assert rows(a) == rows(b) and b.column("index").to_pylist() == list(range(24))
    # calls differ (each worker fills its own calls from its shards); the copies they carried do not
    assert {k: v for k, v in config_a.items() if k not in ("created", "calls")} == \
           {k: v for k, v in config_b.items() if k not in ("created", "calls")}
    assert not Path(f"{distributed}.parts").exists()


@needs_ray
def test_ray_with_a_diffusion_stage_equals_local_table(tmp_path, ray_env, capfd):
    """The shipped off-the-shelf pair (clean classifier behind the DDPM): the workers rebuild the
    same composed graph, so the rows and the recorded stage are the local run's."""
    common = ["certify", "--diffusion", "--n0", 10, "--n", 60, "--max", 6, "--quiet"]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, capsys=capfd)[0] == 0
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--workers", 2, capsys=capfd)
    assert code == 0, err
    (a, config_a), (b, config_b) = read(local), read(distributed)
    assert rows(a) == rows(b)
    assert config_a["denoiser"] == config_b["denoiser"] and config_b["denoiser"]["timestep"] == 145


@needs_ray
def test_ray_video_table_equals_local_table(tmp_path, ray_env, make_linear, capsys):
    """`srtool video` goes through the same _run: a tiny linear video model on six short clips."""
    import cv2

    rng = np.random.default_rng(1)
    model = make_linear(rng.normal(0, 0.01, (3 * 8 * 16 * 16, 4)), np.zeros(4), (3, 8, 16, 16),
                        name="video.onnx", metadata={"srtool.sigma": 0.25})
    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(6):
        writer = cv2.VideoWriter(str(folder / f"clip{k}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (16, 16))
        for _ in range(20 + 4 * k):
            writer.write(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        writer.release()
    common = ["video", "--model", model, "--videos", folder, "--subvideo", 16, "--n0", 10, "--n", 100, "--quiet"]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, capsys=capsys)[0] == 0
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--workers", 2, capsys=capsys)
    assert code == 0, err
    assert rows(read(local)[0]) == rows(read(distributed)[0]) and read(local)[0].num_rows == 6


@needs_ray
@pytest.mark.parametrize("fault", ["exit-after:5", "kill-after:5"])
def test_a_dead_worker_loses_nothing(tmp_path, ray_env, linear_data, monkeypatch, capsys, fault):
    """A worker whose process exits (os._exit) or whose actor is killed (ray.kill) mid-run."""
    common = ["certify", *linear_data, "--n0", 20, "--n", 300, "--quiet"]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, capsys=capsys)[0] == 0
    monkeypatch.setenv("SRTOOL_RAY_FAULT", fault)
    code, _, err = srtool(*[a for a in common if a != "--quiet"], "--out", distributed, "--engine", "ray",
                          "--workers", 2, capsys=capsys)
    assert code == 0, err
    assert "ray: worker 0 lost" in err  # the fault did happen
    table = read(distributed)[0]
    assert rows(table) == rows(read(local)[0]) and table.column("index").to_pylist() == list(range(40))


@needs_ray
def test_an_input_that_kills_every_worker_is_named_and_the_rest_is_kept(tmp_path, ray_env, linear_data,
                                                                       monkeypatch, capsys):
    common = ["certify", *linear_data, "--n0", 20, "--n", 300, "--quiet"]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, capsys=capsys)[0] == 0
    monkeypatch.setenv("SRTOOL_RAY_FAULT", "poison:7")
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--workers", 2, capsys=capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "inputs 7 failed on 4 Ray workers" in errors[0], err
    assert "Traceback" not in err
    saved = read_results(distributed)[0]
    assert sorted(saved.column("index").to_pylist()) == [i for i in range(40) if i != 7]
    # The same command (here on the local engine: the results are engine-independent) finishes it.
    assert srtool(*common, "--out", distributed, capsys=capsys)[0] == 0
    assert rows(read(distributed)[0]) == rows(read(local)[0])


def _spawn(args, env):
    return subprocess.Popen([sys.executable, "-m", "srtool", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@needs_ray
def test_a_killed_driver_resumes_with_the_same_command(tmp_path, ray_env, linear_data, capsys):
    archive = np.load(linear_data[3])
    big = tmp_path / "big.npz"
    np.savez(big, x=np.concatenate([archive["x"]] * 3), y=np.concatenate([archive["y"]] * 3))  # 120 inputs
    args = ["certify", "--model", linear_data[1], "--images", big, "--n0", 50, "--n", 6000, "--batch", 1000,
            "--quiet", "--engine", "ray", "--workers", 2]
    out, reference = tmp_path / "r.parquet", tmp_path / "ref.parquet"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = _spawn(args + ["--out", out], env)
    parts = Path(f"{out}.parts")
    deadline = time.monotonic() + 120
    while not list(parts.glob("part-*.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler runs, the driver's local Ray loses its owner
    process.communicate(timeout=60)
    assert not out.exists(), "the run finished before it was killed; make it longer"
    done = read_results(out)[0].num_rows
    assert 0 < done < 120
    # Ray's node agents notice the loss of their raylet only after a minute or so; end them now.
    time.sleep(1)
    end_processes(ray_processes(ray_env["tmp"]))
    resumed = subprocess.run([sys.executable, "-m", "srtool", *map(str, args), "--out", out], cwd=REPO,
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    local_args = [a for a in args if a not in ("--engine", "ray", "--workers", 2)]
    assert srtool(*local_args, "--out", reference, capsys=capsys)[0] == 0
    table = read(out)[0]
    assert rows(table) == rows(read(reference)[0]) and table.column("index").to_pylist() == list(range(120))


def test_engine_options_need_engine_ray(tmp_path, linear_data, capsys):
    code, _, err = srtool("certify", *linear_data, "--n", 10, "--workers", 2, "--out", tmp_path / "r.parquet",
                          capsys=capsys)
    assert code == 2 and err.strip() == "error: --workers: for --engine ray only"
    assert not (tmp_path / "r.parquet.parts").exists()


def test_an_address_where_no_ray_listens_is_one_line(tmp_path, linear_data, capsys):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "r.parquet"
    code, _, err = srtool("certify", *linear_data, "--n", 10, "--engine", "ray", "--address", f"127.0.0.1:{port}",
                          "--out", out, capsys=capsys)
    assert code == 2 and err.strip() == f"error: cannot reach the Ray cluster at 127.0.0.1:{port} " \
                                        "(no head node listens there)", err
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "linear.onnx"]


@pytest.mark.parametrize("behaviour", ["silent", "http", "close"])
def test_an_address_where_something_else_listens_fails_within_seconds(tmp_path, linear_data, capsys, behaviour):
    """Issue 25 item 6: a listener that is not a Ray head (says nothing, answers HTTP/1, hangs up).
    Was: Ray retried for minutes, deaf to Ctrl-C, and the results lock stayed."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed at the end of the test
                return
            accepted.append(connection)
            if behaviour == "http":
                connection.recv(100)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if behaviour != "silent":
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "r.parquet"
    started = time.monotonic()
    try:
        code, _, err = srtool("certify", *linear_data, "--n", 10, "--engine", "ray", "--address",
                              f"127.0.0.1:{port}", "--out", out, capsys=capsys)
    finally:
        server.close()
        for connection in accepted:
            connection.close()
    assert code == 2 and err.strip() == f"error: no Ray head node at 127.0.0.1:{port}: something else listens " \
        "there (it does not answer as Ray's GCS server does); give the head's GCS port (ray start --head --port)", err
    assert time.monotonic() - started < 10 and accepted
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "linear.onnx"]  # no lock, no parts


@pytest.mark.parametrize("address", [":6379", "localhost", "10.0.0.1", "host:", "host:0", "host:65536",
                                     "host:63 79", "host:port", "[::1]"])
def test_an_address_without_host_or_port_is_one_line(tmp_path, linear_data, capsys, address):
    """Issue 25 item 7: was a Ray traceback and nine lines (:PORT), or files left behind (HOST)."""
    out = tmp_path / "r.parquet"
    code, _, err = srtool("certify", *linear_data, "--n", 10, "--engine", "ray", "--address", address,
                          "--out", out, capsys=capsys)
    assert code == 2 and err.strip() == f"error: --address {address!r}: give the head node's HOST:PORT " \
        "(e.g. 10.0.0.5:6379), or 'auto' for the cluster this machine belongs to", err
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "linear.onnx"]


def test_without_ray_the_error_says_how_to_install_it(tmp_path, ray_env, linear_data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "r.parquet"
    code, _, err = srtool("certify", *linear_data, "--n", 10, "--engine", "ray", "--out", out, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "pip install 'srtool[ray]'" in lines[0], err
    assert not out.exists() and not Path(f"{out}.parts").exists()


@needs_ray
def test_ray_ensemble_sequential_table_equals_local_table(tmp_path, ray_env, linear_data, make_linear, capsys):
    """An ensemble (the Run carries its members' paths) with sequential certification, over Ray."""
    second = make_linear(np.full((28 * 28, 10), 0.001), np.zeros(10), (1, 28, 28), name="second.onnx")
    common = ["certify", *linear_data, "--model", second, "--n0", 10, "--n", 2000, "--sequential",
              "--radii", "0.1,0.2", "--max", 12, "--quiet"]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, capsys=capsys)[0] == 0
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--workers", 2, capsys=capsys)
    assert code == 0, err
    (a, config), (b, _) = read(local), read(distributed)
    assert rows(a) == rows(b) and len(config["members"]) == 2 and config["sequential"]["radii"] == [0.1, 0.2]


@pytest.fixture
def two_nodes(ray_env):
    """A Ray cluster of two nodes on this machine (ray.cluster_utils), one CPU each, so that each
    holds one worker; token authentication with a token of this test's only (set up as srtool does for
    its local Ray, which also refreshes what an earlier test left in Ray's caches). Yields (cluster,
    the second node); the cluster is shut down after the test."""
    from srtool.ray_engine import RayEngine

    RayEngine._local_auth()  # ray_env removed every RAY_AUTH_* variable, and restores them after
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                             "object_store_memory": 80 * 2**20})
    try:
        second = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
        yield cluster, second
    finally:
        cluster.shutdown()


def lose_node(cluster, node) -> None:
    """The node is gone at once, as when its machine goes down: its workers (the raylet's children,
    which would otherwise go on serving their tasks for a while) are killed, then its raylet and the rest."""
    raylet = node.all_processes["raylet"][0].process.pid
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == raylet:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
    cluster.remove_node(node, allow_graceful=False)


@needs_ray
def test_a_lost_node_leaves_the_run_to_the_workers_that_are_left(tmp_path, two_nodes, linear_data, monkeypatch,
                                                                  capsys):
    """Item 8 of issue 25: two nodes, the second killed (all its processes, raylet included) after 4
    rows; the run ends on the head's worker with the local engine's table, and does not wait for a
    replacement the one-CPU cluster that is left cannot place (was: 10 minutes, then an error)."""
    from srtool.results import ResultsWriter

    cluster, second = two_nodes
    common = ["certify", *linear_data, "--n0", 20, "--n", 2000]
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert srtool(*common, "--out", local, "--quiet", capsys=capsys)[0] == 0
    add, rows_seen = ResultsWriter.add, []

    def add_then_kill(writer, row):  # the driver writes each row as it comes back: kill after the 8th
        add(writer, row)
        rows_seen.append(row["index"])
        if len(rows_seen) == 4:
            lose_node(cluster, second)

    # Asking for more workers than the cluster has room for is refused, and writes nothing (issue 25 item 4).
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--address", cluster.address,
                          "--workers", 3, capsys=capsys)
    assert code == 2 and err.strip().endswith("has 2 CPUs and 0 GPUs: not enough for 3 workers of 1 CPU and 0 GPUs")
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "linear.onnx", "local.parquet"]

    monkeypatch.setattr(ResultsWriter, "add", add_then_kill)
    started = time.monotonic()
    code, _, err = srtool(*common, "--out", distributed, "--engine", "ray", "--address", cluster.address,
                          "--workers", 2, capsys=capsys)
    assert code == 0, err
    assert "2 workers" in err and "ray: worker" in err and "lost" in err, err  # the node did go
    assert time.monotonic() - started < 60
    table = read(distributed)[0]
    assert rows(table) == rows(read(local)[0]) and table.column("index").to_pylist() == list(range(40))
