"""Results files under faults: two runs on one file, kill -9, damaged parts and files, a full disk,
and the column set of each kind of run (old files included)."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srtool.errors import UsageError
from srtool.results import COLUMN_GROUPS, BASE_COLUMNS, ResultsWriter, read_results

CONFIG = {"command": "certify", "kind": "images", "sigma": 0.25, "n": 100, "seed": 0}
BASE_NAMES = [name for name, _ in BASE_COLUMNS]
IMAGE_COLUMNS = BASE_NAMES + ["rotated"]


def row(index: int, **extra) -> dict:
    return {"index": index, "label": index % 3, "predict": index % 3, "radius": 0.1 * index,
            "correct": True, "p_lower": 0.9, "count": 90, "n": 100, "counts": [90, 10, 0],
            "invalid": 0, "radius_factor": 1.0, "time_s": 0.01, "path": None, "error": None, **extra}


def write_parts(out, indices, per_part=2) -> None:
    """An interrupted run: its parts on disk, no finished file, the lock released."""
    writer = ResultsWriter(out, CONFIG, flush_rows=per_part, flush_seconds=1e9)
    for i in indices:
        writer.add(row(i))
    writer.flush()
    writer.close()


# -- one writer per file ---------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from srtool.results import ResultsWriter
    writer = ResultsWriter(sys.argv[1], {config}, flush_rows=1)
    writer.add({row})  # flushed: a finished input on disk
    print("ready", flush=True)
    time.sleep(120)
""")


def start_holder(out) -> subprocess.Popen:
    script = HOLDER.format(config=repr(CONFIG), row=repr(row(7)))
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


def test_a_second_run_on_the_same_file_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run.parquet"
    holder = start_holder(out)
    try:
        with pytest.raises(UsageError) as caught:
            ResultsWriter(out, CONFIG)
        assert str(caught.value) == (f"{out} is in use by another srtool run (pid {holder.pid}); "
                                     "wait for it or use another --out")
        with pytest.raises(UsageError, match="in use"):  # --overwrite must not pull the parts from under it
            ResultsWriter(out, CONFIG, overwrite=True)
        assert (tmp_path / "run.parquet.parts" / "part-000000.parquet").is_file()
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_releases_the_lock_and_the_run_resumes_at_once(tmp_path):
    out = tmp_path / "run.parquet"
    holder = start_holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run.parquet.lock").is_file()  # left behind, but nobody holds it
    writer = ResultsWriter(out, CONFIG)
    assert writer.done_indices == {7}
    assert (tmp_path / "run.parquet.lock").read_text().strip() == str(os.getpid())
    writer.add(row(8))
    table = writer.finish()
    assert table.column("index").to_pylist() == [7, 8]
    assert not (tmp_path / "run.parquet.lock").exists()  # finish released and removed it


def test_close_finish_and_garbage_collection_release_the_lock(tmp_path):
    out = tmp_path / "run.parquet"
    first = ResultsWriter(out, CONFIG)
    with pytest.raises(UsageError, match=f"pid {os.getpid()}"):  # also within one process
        ResultsWriter(out, CONFIG)
    first.add(row(0))
    first.flush()
    first.close()
    with pytest.raises(RuntimeError, match="closed"):  # a closed writer no longer owns the file
        first.add(row(1))
        first.flush()
    second = ResultsWriter(out, CONFIG)
    assert second.done_indices == {0}
    del second  # interrupted: never finished, never closed
    gc.collect()
    with ResultsWriter(out, CONFIG) as third:
        assert third.done_indices == {0}
    fourth = ResultsWriter(out, CONFIG)
    fourth.finish()
    ResultsWriter(out, CONFIG).close()


# -- damaged parts and files -----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_part_is_set_aside_and_its_inputs_recomputed(tmp_path, damage):
    out = tmp_path / "run.parquet"
    write_parts(out, range(6))  # parts 0..2 hold inputs {0,1}, {2,3}, {4,5}
    part = tmp_path / "run.parquet.parts" / "part-000001.parquet"
    raw = part.read_bytes()
    broken = {"truncated": raw[:len(raw) // 2], "empty": b"", "garbage": b"\x00garbage" * 40}[damage]
    part.write_bytes(broken)

    with pytest.raises(UsageError, match="part-000001.parquet is damaged"):
        read_results(out)  # reading never moves anything
    assert part.exists()

    writer = ResultsWriter(out, CONFIG, flush_rows=2, flush_seconds=1e9)
    assert writer.done_indices == {0, 1, 4, 5}
    assert len(writer.warnings) == 1
    warning = writer.warnings[0]
    assert warning.startswith("set aside damaged part part-000001.parquet (")
    assert warning.endswith("; its inputs will be recomputed") and "\n" not in warning
    kept = tmp_path / "run.parquet.damaged" / "part-000001.parquet"
    assert kept.read_bytes() == broken and not part.exists()  # moved, byte for byte, never deleted
    assert str(kept) in warning

    writer.add(row(2))
    writer.add(row(3))  # a new part: never the name of one kept (part-000002 holds 4 and 5)
    assert (tmp_path / "run.parquet.parts" / "part-000003.parquet").is_file()
    table = writer.finish()
    assert table.column("index").to_pylist() == list(range(6))
    assert kept.is_file()  # finishing removes the parts folder, not what was set aside
    assert read_results(out)[0].num_rows == 6


def test_a_damaged_finished_file_is_a_clear_error_and_overwrite_keeps_it(tmp_path):
    out = tmp_path / "run.parquet"
    writer = ResultsWriter(out, CONFIG)
    writer.add(row(0))
    writer.finish()
    raw = out.read_bytes()
    out.write_bytes(raw[:len(raw) - 20])

    with pytest.raises(UsageError) as caught:
        ResultsWriter(out, CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{out} is damaged (") and "move it away" in message and "--overwrite" in message
    with pytest.raises(UsageError, match=r"run.parquet is damaged \("):
        read_results(out)

    fresh = ResultsWriter(out, CONFIG, overwrite=True)
    assert fresh.done_indices == set()
    assert fresh.warnings and "run.parquet is damaged: it is set aside" in fresh.warnings[0]
    assert out.read_bytes() == raw[:len(raw) - 20]  # not before the first new row: the run may yet be refused
    fresh.add(row(1))
    assert fresh.finish().column("index").to_pylist() == [1]
    assert (tmp_path / "run.parquet.damaged" / "run.parquet").read_bytes() == raw[:len(raw) - 20]


def test_a_file_that_is_not_parquet_is_never_removed(tmp_path):
    out = tmp_path / "notes.parquet"
    out.write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="is not a Parquet file"):
            ResultsWriter(out, CONFIG, overwrite=overwrite)
    assert out.read_text() == "my notes"
    with pytest.raises(UsageError, match="is not a Parquet file"):
        read_results(out)


def test_leftover_temporary_files_of_a_killed_run_are_cleared(tmp_path):
    out = tmp_path / "run.parquet"
    write_parts(out, range(2))
    half = tmp_path / "run.parquet.parts" / ".tmp-part-000001.parquet"
    half.write_bytes(b"PAR1 half")
    writer = ResultsWriter(out, CONFIG)
    assert not half.exists() and writer.done_indices == {0, 1} and writer.warnings == []
    writer.close()


# -- a full disk -----------------------------------------------------------------------------------

def fail_once(monkeypatch, error: OSError):
    """pq.write_table writes half a file, then fails with `error`, once."""
    real = pq.write_table
    calls = {"failed": 0}

    def write_table(table, where, *args, **kwargs):
        if not calls["failed"]:
            calls["failed"] += 1
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a file")
            raise error
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    return calls


def test_disk_full_in_a_flush_keeps_every_finished_row_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run.parquet"
    parts = tmp_path / "run.parquet.parts"
    writer = ResultsWriter(out, CONFIG, flush_rows=2, flush_seconds=1e9)
    writer.add(row(0))
    writer.add(row(1))  # part 0 written
    fail_once(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    writer.add(row(2))
    with pytest.raises(UsageError) as caught:
        writer.add(row(3))
    message = str(caught.value)
    assert "part-000001.parquet" in message and "the disk is full" in message
    assert "free some space and run the same command to resume" in message and "\n" not in message
    assert sorted(p.name for p in parts.iterdir()) == ["config.json", "part-000000.parquet"]  # no tmp left
    assert not out.exists()

    writer.close()  # the run stops here; space is freed; the same command resumes
    resumed = ResultsWriter(out, CONFIG)
    assert resumed.done_indices == {0, 1}
    for i in (2, 3):
        resumed.add(row(i))
    assert resumed.finish().column("index").to_pylist() == [0, 1, 2, 3]


def test_a_failed_flush_can_be_retried_by_the_same_writer(tmp_path, monkeypatch):
    out = tmp_path / "run.parquet"
    writer = ResultsWriter(out, CONFIG, flush_rows=100, flush_seconds=1e9)
    writer.add(row(5))
    fail_once(monkeypatch, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(UsageError) as caught:
        writer.flush()
    assert "Input/output error" in str(caught.value) and "disk is full" not in str(caught.value)
    writer.flush()  # the rows were kept pending
    assert writer.finish().column("index").to_pylist() == [5]


def test_disk_full_while_merging_keeps_the_parts_and_finish_can_run_again(tmp_path, monkeypatch):
    out = tmp_path / "run.parquet"
    write_parts(out, range(4))
    writer = ResultsWriter(out, CONFIG)
    writer.add(row(4))
    writer.flush()
    calls = {"n": 0}
    real = pq.write_table

    def write_table(table, where, *args, **kwargs):
        calls["n"] += 1
        if str(where).endswith(".tmp-run.parquet") and calls["n"] == 1:
            with open(where, "wb") as handle:
                handle.write(b"PAR1")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(UsageError, match=r"cannot write .*run.parquet: the disk is full"):
        writer.finish()
    assert not out.exists() and not (tmp_path / ".tmp-run.parquet").exists()
    assert len(list((tmp_path / "run.parquet.parts").glob("part-*.parquet"))) == 3
    assert read_results(out)[0].num_rows == 5  # every finished row is on disk
    assert writer.finish().column("index").to_pylist() == list(range(5))


# -- columns by kind of run ------------------------------------------------------------------------

def test_image_tables_carry_no_video_columns(tmp_path):
    writer = ResultsWriter(tmp_path / "images.parquet", CONFIG)
    writer.add(row(0, invalid=3))
    writer.add(row(1, rotated=True))  # turned upright by its EXIF orientation (image runs only)
    table = writer.finish()
    assert table.column_names == IMAGE_COLUMNS
    assert "frames" not in table.column_names and table.column("invalid").to_pylist() == [3, 0]
    assert table.column("rotated").to_pylist() == [None, True]
    assert pq.read_table(tmp_path / "images.parquet").column_names == IMAGE_COLUMNS


def test_video_and_sequential_runs_add_their_column_groups(tmp_path):
    video = ResultsWriter(tmp_path / "v.parquet", {**CONFIG, "kind": "video"})
    video.add(row(0, frames=64, subvideos=3))
    assert video.finish().column_names == BASE_NAMES + ["frames", "subvideos"]

    sequential = ResultsWriter(tmp_path / "s.parquet", {**CONFIG, "sequential": {"budget": 1000}})
    sequential.add(row(0, stop="certified"))
    table = sequential.finish()
    assert table.column_names == IMAGE_COLUMNS + ["stop"] and table.column("stop").to_pylist() == ["certified"]

    explicit = ResultsWriter(tmp_path / "e.parquet", CONFIG, groups=["video", "sequential"])
    explicit.add(row(0, frames=16, stop="futile"))
    assert explicit.finish().column_names == BASE_NAMES + ["frames", "subvideos", "stop"]
    assert set(COLUMN_GROUPS) >= {"video", "sequential"}

    images = ResultsWriter(tmp_path / "i.parquet", CONFIG)
    with pytest.raises(ValueError, match="frames"):  # a column nobody would see is a bug, not a row
        images.add(row(0, frames=64))
    images.close()


OLD_SCHEMA = pa.schema([  # srtool 0.1's table: video columns on every run, no `invalid`
    ("index", pa.int64()), ("label", pa.int64()), ("predict", pa.int64()), ("radius", pa.float64()),
    ("correct", pa.bool_()), ("p_lower", pa.float64()), ("p_value", pa.float64()), ("count", pa.int64()),
    ("n", pa.int64()), ("counts", pa.list_(pa.int64())), ("radius_factor", pa.float64()),
    ("time_s", pa.float64()), ("path", pa.string()), ("error", pa.string()),
    ("frames", pa.int64()), ("subvideos", pa.int64())])


def old_rows(indices, **extra):
    return [{k: v for k, v in row(i, **extra).items() if k != "invalid"} for i in indices]


def test_an_old_finished_image_file_is_readable_and_resumable(tmp_path):
    out = tmp_path / "old.parquet"
    table = pa.Table.from_pylist(old_rows([0, 1]), schema=OLD_SCHEMA)
    pq.write_table(table.replace_schema_metadata({b"srtool": json.dumps(CONFIG).encode()}), out)

    read, config = read_results(out)
    assert config == CONFIG and read.column("invalid").to_pylist() == [None, None]

    writer = ResultsWriter(out, CONFIG)
    assert writer.done_indices == {0, 1}
    writer.add(row(2, invalid=4))
    merged = writer.finish()
    assert merged.column_names == IMAGE_COLUMNS  # the empty video columns are gone
    assert merged.column("invalid").to_pylist() == [None, None, 4]


def test_old_parts_of_a_video_run_resume_with_their_frames(tmp_path):
    out = tmp_path / "old.parquet"
    parts = tmp_path / "old.parquet.parts"
    parts.mkdir()
    config = {**CONFIG, "kind": "video"}
    (parts / "config.json").write_text(json.dumps(config))
    pq.write_table(pa.Table.from_pylist(old_rows([0], frames=48, subvideos=2), schema=OLD_SCHEMA),
                   parts / "part-000000.parquet")
    assert read_results(out)[0].column("frames").to_pylist() == [48]
    writer = ResultsWriter(out, config)
    writer.add(row(1, frames=64, subvideos=3))
    table = writer.finish()
    assert table.column("frames").to_pylist() == [48, 64]
    assert table.column("invalid").to_pylist() == [None, 0]


def test_a_file_with_values_in_columns_this_run_does_not_write_is_refused(tmp_path):
    out = tmp_path / "video.parquet"
    table = pa.Table.from_pylist(old_rows([0], frames=48, subvideos=2), schema=OLD_SCHEMA)
    pq.write_table(table.replace_schema_metadata({b"srtool": json.dumps(CONFIG).encode()}), out)
    with pytest.raises(UsageError, match=r"holds columns this run does not write \(frames, subvideos\)"):
        ResultsWriter(out, CONFIG)
