"""Results as Parquet: one row per input, the run's configuration in the file's metadata (DESIGN §5).

A run writes as it goes into a sibling folder `RUN.parquet.parts/`: every flush is one small
Parquet file, written to a temporary name and renamed into place, so a kill at any instant leaves
only whole parts. Running the same command again reads the parts (and a finished RUN.parquet, if
the run is being extended), skips the inputs already done, and at the end all rows are merged,
sorted by index, into RUN.parquet (again via a temporary file and an atomic rename).

The configuration that decides the numbers (model hash, plan, sigma, n, seed, ...) is stored with
the parts; resuming with a different one is refused unless the user asks to overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError

METADATA_KEY = b"srtool"
SCHEMA = pa.schema([
    ("index", pa.int64()),
    ("label", pa.int64()),
    ("predict", pa.int64()),
    ("radius", pa.float64()),
    ("correct", pa.bool_()),
    ("p_lower", pa.float64()),
    ("p_value", pa.float64()),
    ("count", pa.int64()),
    ("n", pa.int64()),
    ("counts", pa.list_(pa.int64())),
    ("radius_factor", pa.float64()),
    ("time_s", pa.float64()),
    ("path", pa.string()),
    ("error", pa.string()),
    # Videos only (null for images): frames read from the file, sub-videos used (k).
    ("frames", pa.int64()),
    ("subvideos", pa.int64()),
])
# Settings that do not change any number in the table; they may differ between a run and its resume.
VOLATILE = {"device", "batch", "threads", "version", "skip", "max", "created"}


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def read_config(path: Path) -> dict:
    """The srtool configuration stored in a results file; a clear error for anything else."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:
        raise UsageError(f"{path} is not a Parquet file") from None
    if METADATA_KEY not in metadata:
        raise UsageError(f"{path} is not an srtool results file (no '{METADATA_KEY.decode()}' metadata)")
    return json.loads(metadata[METADATA_KEY])


def read_results(path: str | Path) -> tuple[pa.Table, dict]:
    """A finished run, or the parts of one still running or interrupted."""
    path = Path(path)
    parts = Path(f"{path}.parts")
    if path.is_file():
        return pq.read_table(path), read_config(path)
    if parts.is_dir() and (parts / "config.json").is_file():
        return _read_parts(parts), json.loads((parts / "config.json").read_text())
    raise UsageError(f"results not found: {path}")


def _read_parts(parts: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def _conform(table: pa.Table) -> pa.Table:
    """`table` with SCHEMA's columns; columns added after it was written (frames, subvideos) are null."""
    for name in SCHEMA.names:
        if name not in table.column_names:
            kind = SCHEMA.field(name).type
            table = table.append_column(pa.field(name, kind), pa.nulls(len(table), kind))
    return table.select(SCHEMA.names).cast(SCHEMA)


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    table = table.sort_by("index")
    indices = table.column("index").to_pylist()
    keep = [i for i, value in enumerate(indices) if i == 0 or value != indices[i - 1]]
    return table.take(keep) if len(keep) != len(indices) else table


class ResultsWriter:
    """Appends rows to a run, durable at every flush; `finish` produces the single Parquet file."""

    def __init__(self, path: str | Path, config: dict, overwrite: bool = False,
                 flush_rows: int = 256, flush_seconds: float = 2.0):
        self.path = Path(path)
        self.parts = Path(f"{self.path}.parts")
        self.config = config
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._rows: list[dict] = []
        self._last_flush = time.monotonic()
        self._part_number = 0
        if overwrite:
            self._remove()
        self._done = self._resume()

    # -- resume --------------------------------------------------------------------------------
    def _check_same(self, stored: dict, where: Path) -> None:
        if _identity(stored) != _identity(self.config):
            changed = sorted(k for k in set(_identity(stored)) | set(_identity(self.config))
                             if stored.get(k) != self.config.get(k))
            raise UsageError(f"{where} holds a run with a different configuration "
                             f"({', '.join(changed)}); use --overwrite or another --out")

    def _resume(self) -> pa.Table:
        done = []
        if self.path.exists():
            if not self.path.is_file():
                raise UsageError(f"{self.path} exists and is not a file")
            self._check_same(read_config(self.path), self.path)
            done.append(pq.read_table(self.path))
        config_file = self.parts / "config.json"
        if self.parts.is_dir():
            if not config_file.is_file():
                raise UsageError(f"{self.parts} is not an srtool parts folder; remove it or use --overwrite")
            self._check_same(json.loads(config_file.read_text()), self.parts)
            done.append(_read_parts(self.parts))
            self._part_number = len(list(self.parts.glob("part-*.parquet")))
        else:
            self.parts.mkdir(parents=True)
            _atomic_write_text(config_file, json.dumps(self.config, indent=1))
        done = [_conform(t) for t in done]
        return _dedupe_sorted(pa.concat_tables(done)) if done else SCHEMA.empty_table()

    @property
    def done_indices(self) -> set[int]:
        return set(self._done.column("index").to_pylist())

    @property
    def done_rows(self) -> list[dict]:
        return self._done.to_pylist()

    # -- writing -------------------------------------------------------------------------------
    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=SCHEMA)
        target = self.parts / f"part-{self._part_number:06d}.parquet"
        tmp = self.parts / f".tmp-{target.name}"
        pq.write_table(table, tmp)
        _fsync_replace(tmp, target)
        self._part_number += 1
        self._rows = []

    def finish(self) -> pa.Table:
        self.flush()
        tables = [_conform(self._done), _conform(_read_parts(self.parts))]
        table = _dedupe_sorted(pa.concat_tables(tables))
        metadata = {METADATA_KEY: json.dumps(self.config).encode()}
        table = table.replace_schema_metadata(metadata)
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        pq.write_table(table, tmp)
        _fsync_replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return table

    def _remove(self) -> None:
        if self.path.is_file():
            read_config(self.path)  # never delete a file that is not ours
            self.path.unlink()
        shutil.rmtree(self.parts, ignore_errors=True)


def _fsync_replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    _fsync_replace(tmp, path)
