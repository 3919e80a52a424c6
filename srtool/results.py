"""Results as Parquet: one row per input, the run's configuration in the file's metadata (DESIGN §5).

A run writes as it goes into a sibling folder `RUN.parquet.parts/`: every flush is one small
Parquet file, written to a temporary name and renamed into place, so a kill at any instant leaves
only whole parts. Running the same command again reads the parts (and a finished RUN.parquet, if
the run is being extended), skips the inputs already done, and at the end all rows are merged,
sorted by index, into RUN.parquet (again via a temporary file and an atomic rename).

The configuration that decides the numbers (model hash, plan, sigma, n, seed, ...) is stored with
the parts; resuming with a different one is refused unless the user asks to overwrite.

Columns: every run has the base columns; a kind of run adds its own group (videos: `frames`,
`subvideos`; sequential runs: `stop`), so an image table carries no empty video columns. Files
written before a column existed are read with that column null.

Faults, each left in a state the same command resumes from:
- two runs on one file: a writer holds an exclusive lock (`RUN.parquet.lock`, with its pid) for its
  life, so a second run is refused at once; the OS drops the lock when a process dies, even by kill -9;
- a damaged part (cut short, garbage): set aside, never deleted, into `RUN.parquet.damaged/`; its
  inputs are simply computed again, and `ResultsWriter.warnings` says so;
- a full disk: a UsageError; every part written before stays, the half-written file is removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import weakref
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not protected from each other
    fcntl = None

METADATA_KEY = b"srtool"

# -- columns --------------------------------------------------------------------------------------

BASE_COLUMNS = [
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
    ("invalid", pa.int64()),  # copies whose logits were not finite: votes for no class
    ("radius_factor", pa.float64()),
    ("time_s", pa.float64()),
    ("path", pa.string()),
    ("error", pa.string()),
]
COLUMN_GROUPS = {
    "image": [("rotated", pa.bool_())],  # turned upright as the file's EXIF orientation says
    "video": [("frames", pa.int64()), ("subvideos", pa.int64())],  # frames read, sub-videos used (k)
    "sequential": [("stop", pa.string())],  # why sampling stopped
    # ensembles with --consensus: copies that ran every member (the first K disagreed); null in files
    # written before the CUDA path counted them
    "consensus": [("escalated", pa.int64())],
}


def results_schema(groups: Iterable[str] = ()) -> pa.Schema:
    """The base columns, then those of each named group, in COLUMN_GROUPS order."""
    groups = set(groups)
    unknown = groups - set(COLUMN_GROUPS)
    if unknown:
        raise ValueError(f"unknown column groups: {', '.join(sorted(unknown))}")
    fields = BASE_COLUMNS + [f for name, group in COLUMN_GROUPS.items() if name in groups for f in group]
    return pa.schema(fields)


def groups_for(config: dict) -> tuple[str, ...]:
    """The column groups a run's configuration implies: video runs (`kind` video) carry the video
    columns, sequential runs (a `sequential` entry) the stopping reason."""
    groups = ("video",) if config.get("kind") in ("video", "videos") else ("image",)
    return groups + (("sequential",) if config.get("sequential") else ()) + \
        (("consensus",) if config.get("consensus") else ())


# Columns every row srtool writes fills (error rows too); readers and resumes rely on them.
FILLED = ("index", "label", "predict", "correct", "n", "time_s")
_TYPES = dict(BASE_COLUMNS + [f for group in COLUMN_GROUPS.values() for f in group])
# Keys of the configuration the readers use, with the types srtool writes (None is allowed).
CONFIG_TYPES = {"command": str, "kind": str, "label": str, "reduce": str, "noise_space": str,
                "sigma": (int, float), "radius_factor": (int, float), "n": int, "n0": int, "patches": int,
                "chunk": int, "subvideo": int, "stride": int, "classes": list, "members": list,
                "sequential": dict, "consensus": int}


def _damage(table: pa.Table) -> str | None:
    """Why `table` cannot be rows srtool wrote (a column of another type, an empty cell where every
    row has a value), or None. Damage inside a Parquet page can do either without a read error."""
    if "index" not in table.column_names or table.column("index").null_count:
        return "no input index"
    for field in table.schema:
        expected = _TYPES.get(field.name)
        if expected is not None and field.type != expected and field.type != pa.null():
            return f"column {field.name} holds {field.type}, not {expected}"
    empty = [name for name in FILLED if name not in table.column_names or table.column(name).null_count]
    return f"column {empty[0]} has empty cells" if empty else None


def _conform(table: pa.Table, schema: pa.Schema, where: Path) -> pa.Table:
    """`table` with exactly `schema`'s columns; columns it lacks (added since it was written) are null.

    A column the schema drops must hold nothing (old image files carried all-null video columns);
    one with values means the file was written by another kind of run or a newer srtool.
    """
    extra = [name for name in table.column_names
             if name not in schema.names and table.column(name).null_count < len(table)]
    if extra:
        raise UsageError(f"{where} holds columns this run does not write ({', '.join(extra)}); "
                         "use --overwrite or another --out")
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(schema.names).cast(schema)


def _with_base_columns(table: pa.Table) -> pa.Table:
    """For readers: the base columns that a file written before them lacks, as nulls; all else as is."""
    for name, kind in BASE_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, kind), pa.nulls(len(table), kind))
    return table


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    table = table.sort_by("index")
    indices = table.column("index").to_pylist()
    keep = [i for i, value in enumerate(indices) if i == 0 or value != indices[i - 1]]
    return table.take(keep) if len(keep) != len(indices) else table


# -- reading --------------------------------------------------------------------------------------

# Settings that do not change any number in the table; they may differ between a run and its resume.
VOLATILE = {"device", "batch", "threads", "version", "skip", "max", "created", "calls", "copies"}
# The ONNX Runtime calls a run made and the noisy copies they carried, summed over its resumes: each
# part records those of its rows (Parquet metadata under this key), the finished file the totals.
USAGE_KEY = b"srtool_usage"
USAGE = ("calls", "copies")
PART = re.compile(r"part-(\d+)\.parquet$")


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def _reason(error: Exception) -> str:
    """A short reason from pyarrow's long messages ("Could not open Parquet input source '…': …")."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)
    if "magic bytes not found" in text:
        return "not a complete Parquet file"
    return text.split(". ")[0].rstrip(".")


def _looks_parquet(path: Path) -> bool:
    """A Parquet file starts with PAR1, even one cut short: damaged, but ours to set aside."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def _unreadable(path: Path, error: Exception) -> UsageError:
    if isinstance(error, PermissionError):
        return UsageError(f"{path}: permission denied")
    if _looks_parquet(path):
        return UsageError(f"{path} is damaged ({_reason(error)})")
    return UsageError(f"{path} is not a Parquet file")


def _read_finished(path: Path) -> tuple[pa.Table, dict]:
    """A finished run's table and configuration; a clear error for a damaged or foreign file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    metadata = table.schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise UsageError(f"{path} is not an srtool results file (no '{METADATA_KEY.decode()}' metadata)")
    config = _parse_config(metadata[METADATA_KEY], path)
    damage = _damage(table)
    if damage:
        raise UsageError(f"{path} is damaged ({damage})")
    return table, config


def _parse_config(text: bytes, path: Path) -> dict:
    """The configuration a results file stores: a JSON object, or the file is damaged."""
    try:
        config = json.loads(text)
    except ValueError:
        raise UsageError(f"{path} is damaged (its srtool metadata is not JSON)") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is damaged (its srtool metadata is not a JSON object)")
    problem = _config_problem(config)
    if problem:
        raise UsageError(f"{path} is damaged (its srtool metadata {problem})")
    return config


def _config_problem(config: dict) -> str | None:
    """What is wrong with a stored configuration (a key missing, or of a type srtool never writes)."""
    for key in ("sigma", "n"):
        if key not in config:
            return f"has no {key}"
    for key, kinds in CONFIG_TYPES.items():
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"has {key} = {json.dumps(value)[:40]}"
    return None


def read_config(path: Path) -> dict:
    """The srtool configuration stored in a results file; a clear error for anything else."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(Path(path), error) from None
    if METADATA_KEY not in metadata:
        raise UsageError(f"{path} is not an srtool results file (no '{METADATA_KEY.decode()}' metadata)")
    return _parse_config(metadata[METADATA_KEY], path)


def _read_parts_config(parts: Path) -> dict:
    config_file = parts / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{parts} is not an srtool parts folder; remove it or use --overwrite")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or _config_problem(config):
        raise UsageError(f"{config_file} is damaged; use --overwrite to start over")
    return config


def _part_files(parts: Path) -> list[Path]:
    return sorted(p for p in parts.glob("part-*.parquet") if PART.fullmatch(p.name))


def _read_part(part: Path) -> pa.Table:
    """One part as written; raises ValueError (or pyarrow's errors) when it is damaged."""
    table = pq.read_table(part)
    damage = _damage(table)
    if damage:
        raise ValueError(damage)
    return table


def _part_usage(table: pa.Table) -> dict:
    """The calls and copies a part records (nothing for parts written before srtool recorded them)."""
    try:
        usage = json.loads((table.schema.metadata or {}).get(USAGE_KEY, b"{}"))
    except ValueError:
        return {}
    return usage if isinstance(usage, dict) else {}


def read_results(path: str | Path) -> tuple[pa.Table, dict]:
    """A finished run, or the parts of one still running or interrupted."""
    path = Path(path)
    parts = Path(f"{path}.parts")
    if path.is_file():
        table, config = _read_finished(path)
        return _with_base_columns(table), config
    if parts.is_dir():
        config = _read_parts_config(parts)
        tables = []
        for part in _part_files(parts):
            try:
                tables.append(_read_part(part))
            except PermissionError as error:
                raise _unreadable(part, error) from None
            except (pa.ArrowException, OSError, ValueError) as error:
                raise UsageError(f"{part} is damaged ({_reason(error)}); running the same command "
                                 "sets it aside and computes its inputs again") from None
        schema = results_schema(groups_for(config))
        table = (pa.concat_tables([_conform(t, schema, parts) for t in tables]) if tables
                 else schema.empty_table())
        return table, config
    raise UsageError(f"results not found: {path}")


# -- writing --------------------------------------------------------------------------------------

class ResultsWriter:
    """Appends rows to a run, durable at every flush; `finish` produces the single Parquet file.

    `groups` names the optional column groups (COLUMN_GROUPS) the rows fill; None takes them from the
    configuration (`groups_for`). The writer holds the file's lock from construction to
    `finish` or `close` (or until it is garbage-collected, or the process ends); it is also a
    context manager. `warnings` lists one-line notes for the user (damaged parts set aside).
    """

    def __init__(self, path: str | Path, config: dict, overwrite: bool = False,
                 flush_rows: int = 256, flush_seconds: float = 2.0, *,
                 groups: Iterable[str] | None = None):
        self.path = Path(path)
        if self.path.is_dir() or not self.path.name:
            raise UsageError(f"{path} is a folder; give the results file's name, e.g. {Path(path) / 'run.parquet'}")
        self.parts = Path(f"{self.path}.parts")
        self.damaged = Path(f"{self.path}.damaged")  # where unreadable parts are set aside
        self.config = config
        self.schema = results_schema(groups_for(config) if groups is None else groups)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.warnings: list[str] = []
        self._rows: list[dict] = []
        self._usage = dict.fromkeys(USAGE, 0)  # calls and copies of the rows written and resumed
        self._pending_usage = dict.fromkeys(USAGE, 0)  # … and of the rows not yet flushed
        self._written: list[Path] = []  # parts written by this writer, merged by finish
        self._last_flush = time.monotonic()
        self._part_number = 0
        # Nothing is written until the first row (or finish): a run refused after the writer opened
        # (a model that votes past its classes, a Ray cluster without room) leaves no file. Until
        # then the writer holds only the lock, in the folders it had to make, which close() removes.
        self._started = False
        self._overwrite = overwrite  # the old results go when the first new row is written
        self._made_folders = _make_folders(self.path.parent)
        self._lock = _Lock(Path(f"{self.path}.lock"), self.path)
        if self._lock.warning:
            self.warnings.append(self._lock.warning)
        try:
            self._remove_temporaries()
            if overwrite:
                self._check_removable()
                self._done = self.schema.empty_table()
            else:
                self._done = self._resume()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; rows not yet flushed are dropped (their inputs are recomputed on resume).
        A writer that never wrote also removes the folders it made for the results."""
        self._lock.release()
        if not self._started:
            for folder in reversed(self._made_folders):
                try:
                    folder.rmdir()  # only while empty: another process may have put files there since
                except OSError:
                    break
            self._made_folders = []

    def _start(self) -> None:
        """Before the first write: the old results go (--overwrite), the parts folder and its
        configuration are made (a fresh run)."""
        if self._started:
            return
        if self._overwrite:
            self._remove()
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            self._write(lambda tmp: tmp.write_text(json.dumps(self.config, indent=1)),
                        self.parts / "config.json")
        self._started = True

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
            try:
                table, stored = _read_finished(self.path)
            except UsageError as error:
                if not _looks_parquet(self.path):
                    raise
                raise UsageError(f"{error}; move it away, or use --overwrite to start over "
                                 f"(it is then kept in {self.damaged})") from None
            self._check_same(stored, self.path)
            self._add_usage(stored)
            done.append(_conform(table, self.schema, self.path))
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()  # left by a run that could not even write its configuration
        if self.parts.is_dir():
            self._check_same(_read_parts_config(self.parts), self.parts)
            for part in _part_files(self.parts):
                try:
                    table = _read_part(part)
                    done.append(_conform(table, self.schema, part))
                    self._add_usage(_part_usage(table))
                except PermissionError as error:
                    raise _unreadable(part, error) from None
                except (pa.ArrowException, OSError, ValueError) as error:
                    self._set_aside(part, f"set aside damaged part {part.name} ({_reason(error)})",
                                    "its inputs will be recomputed")
            numbers = [int(PART.fullmatch(p.name).group(1)) for p in _part_files(self.parts)]
            self._part_number = max(numbers, default=-1) + 1  # after the last: a part set aside leaves a gap
        return _dedupe_sorted(pa.concat_tables(done)) if done else self.schema.empty_table()

    def _set_aside(self, file: Path, what: str, then: str) -> None:
        """Move an unreadable file into RUN.parquet.damaged/ (never delete: it may be recoverable)."""
        self.damaged.mkdir(exist_ok=True)
        target = self.damaged / file.name
        number = 1
        while target.exists():
            target = self.damaged / f"{file.name}.{number}"
            number += 1
        os.rename(file, target)
        self.warnings.append(f"{what} as {target}; {then}")

    def _remove_temporaries(self) -> None:
        """Half-written files of a run killed while writing; under the lock nobody else is writing them."""
        candidates = [self.path.with_name(f".tmp-{self.path.name}")]
        if self.parts.is_dir():
            candidates += list(self.parts.glob(".tmp-*"))
        for tmp in candidates:
            if tmp.is_file():
                tmp.unlink()

    @property
    def done_indices(self) -> set[int]:
        return set(self._done.column("index").to_pylist())

    @property
    def done_rows(self) -> list[dict]:
        return self._done.to_pylist()

    def _add_usage(self, usage: dict) -> None:
        for key in USAGE:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:  # older files: none
                self._usage[key] += value

    # -- writing -------------------------------------------------------------------------------
    def count_calls(self, calls: int, copies: int) -> None:
        """ONNX Runtime calls and the copies they carried, for the rows added next (metadata)."""
        self._pending_usage["calls"] += int(calls)
        self._pending_usage["copies"] += int(copies)

    @property
    def usage(self) -> dict:
        """Calls and copies of every row so far (resumed runs included)."""
        return {key: self._usage[key] + self._pending_usage[key] for key in USAGE}

    def add(self, row: dict) -> None:
        unknown = set(row) - set(self.schema.names)
        if unknown:  # a column nobody would see: name the group the writer should have been given
            raise ValueError(f"row columns not in this run's results schema: {', '.join(sorted(unknown))} "
                             "(see results.COLUMN_GROUPS and ResultsWriter's groups)")
        self._rows.append(row)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows added since the last flush as one part; on failure they stay pending."""
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        if not self._lock.held:
            raise RuntimeError(f"the results writer for {self.path} is closed")
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        table = table.replace_schema_metadata({USAGE_KEY: json.dumps(self._pending_usage).encode()})
        self._start()
        target = self.parts / f"part-{self._part_number:06d}.parquet"
        self._write(lambda tmp: pq.write_table(table, tmp), target)
        self._written.append(target)
        self._part_number += 1
        self._rows = []
        self._add_usage(self._pending_usage)
        self._pending_usage = dict.fromkeys(USAGE, 0)

    def finish(self) -> pa.Table:
        """Merge everything into RUN.parquet, remove the parts, release the lock.

        On failure (a full disk) the parts stay and the lock is kept, so finish may be called again.
        """
        self.flush()
        self._start()
        tables = [self._done]
        for part in self._written:
            try:
                tables.append(_conform(_read_part(part), self.schema, part))
            except (pa.ArrowException, OSError, ValueError) as error:
                raise UsageError(f"cannot read back {part} ({_reason(error)}); run the same command to "
                                 "resume") from None
        table = _dedupe_sorted(pa.concat_tables(tables))
        self.config.update(self._usage)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(self.config).encode()})
        self._write(lambda tmp: pq.write_table(table, tmp), self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.close()
        return table

    def _write(self, write, target: Path) -> None:
        """`write(tmp)`, then an atomic rename to `target`; an OSError leaves no file behind."""
        tmp = target.with_name(f".tmp-{target.name}")
        try:
            write(tmp)
            _fsync_replace(tmp, target)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise UsageError(_write_failure(target, error)) from None

    def _check_removable(self) -> None:
        """--overwrite: refuse at once to replace a file that is not srtool's (nor a damaged Parquet)."""
        if self.path.is_file():
            try:
                read_config(self.path)
            except UsageError:
                if not _looks_parquet(self.path):
                    raise
                self.warnings.append(f"{self.path.name} is damaged: it is set aside in {self.damaged} "
                                     "when the first new row is written (starting over)")

    def _remove(self) -> None:
        if self.path.is_file():
            try:
                read_config(self.path)  # never delete a file that is not ours
            except UsageError:
                if not _looks_parquet(self.path):
                    raise
                # a damaged results file: the user asked to start over, but it is kept, not deleted
                self._set_aside(self.path, f"set aside damaged {self.path.name}", "starting over")
            else:
                self.path.unlink()
        shutil.rmtree(self.parts, ignore_errors=True)


def _make_folders(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it made, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for made in reversed(missing):
            made.mkdir(exist_ok=True)
    except FileExistsError:  # a file where a folder should be
        raise UsageError(f"cannot make the folder {made}: a file has that name") from None
    except OSError as error:
        raise UsageError(f"cannot make the folder {made}: {error.strerror}") from None
    return list(reversed(missing))


def _write_failure(target: Path, error: OSError) -> str:
    """One line for a write that failed: say plainly when the disk is full, and that resume works."""
    full = error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
    what = "the disk is full" if full else (error.strerror or _reason(error))
    return (f"cannot write {target}: {what}; every input finished before is saved, "
            f"{'free some space and ' if full else ''}run the same command to resume")


def _fsync_replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    try:  # make the rename itself durable
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


# -- one writer per results file ------------------------------------------------------------------

class _Lock:
    """An exclusive, non-blocking flock on RUN.parquet.lock, holding the owner's pid.

    The OS releases a flock when its process ends, however it ends, so a killed run never leaves a
    stale lock behind. The file is removed on release; a run that opened it just before that (and
    so locks a file no longer in the folder) notices and locks the new one instead.
    """

    def __init__(self, lock_path: Path, results: Path):
        self.path = lock_path
        self.warning: str | None = None
        self._fd: int | None = None
        if fcntl is None:
            self.warning = f"cannot lock {results} on this system; make sure no other run writes to it"
            self._finalizer = None
            return
        while self._fd is None:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UsageError(f"{results} is in use by another srtool run (pid {holder}); "
                                 "wait for it or use another --out") from None
            except OSError as error:  # a file system without locks (some network mounts)
                os.close(fd)
                self.warning = (f"cannot lock {lock_path} ({error.strerror}); make sure no other run "
                                f"writes to {results}")
                break
            if _same_file(fd, lock_path):
                self._fd = fd
            else:
                os.close(fd)
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        # released when the writer is garbage-collected or the interpreter exits, if not before
        self._finalizer = weakref.finalize(self, _release, self._fd, lock_path)

    @property
    def held(self) -> bool:
        return self._finalizer is None or self._finalizer.alive

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino)


def _release(fd: int | None, lock_path: Path) -> None:
    if fd is None:
        return
    try:
        lock_path.unlink(missing_ok=True)  # while still holding it, so no one locks a removed file
    except OSError:
        pass
    os.close(fd)
