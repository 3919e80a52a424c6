"""`--engine ray`: one run's inputs sharded over Ray actors, each holding one ONNX Runtime session.

How it fits the local engine (core.start):
- The driver starts the run exactly as the local engine does (every check, the ResultsWriter, the
  inputs still to do); only the execution loop is swapped: `RayEngine.execute` has the signature
  of `pipeline.run`, so the progress bar and the summary are the same code.
- Each actor receives the run's frozen description (core.Run) and rebuilds the engine from it with
  core.start (in the driver's folder where the node has it, else with the paths made absolute), so
  plan, sampling graph, batch and settings are the driver's by construction; it then reports what it
  sees (configuration, number of inputs, labels) and the driver refuses a worker that sees another
  model or dataset (a cluster node with other files).
- An actor evaluates a shard (a short run of input indices) with `pipeline.evaluate_all` (the
  scheduler keeps several of its inputs in flight and fills every call from them) and yields one
  row per input as it finishes, with the ONNX Runtime calls and copies since the last (a Ray
  streaming generator), so rows reach the driver as they are done and a worker that dies loses
  only the inputs it had in flight. The driver writes every row through its
  ResultsWriter: the parts, the resume and the final single Parquet file are the local engine's.
- Each input's noise depends only on (seed, index) (srtool/noise.py), so which worker evaluates an
  input, and in what order, changes nothing: the table equals the local engine's row for row.

Faults: a worker that dies (killed, crashed, its node lost) is replaced by a new actor where the
cluster as it is now has room for one (a lost node takes its room with it: the run goes on with the
workers left and takes a replacement when room appears; it never waits for one once the inputs are
done), and its unfinished shards go back to the queue, the input it was working on alone at the front. That input
is charged one attempt; an input that has killed MAX_ATTEMPTS workers is given up, the run goes on
with the others, and at the end a one-line error names the inputs that failed (what finished is
saved; the same command retries them). An exception raised by srtool inside a worker (not a death)
would happen on any worker, so it stops the run at once with its own message, as it would locally.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import click

from .errors import UsageError

INSTALL_HINT = "pip install 'srtool[ray]'"
MAX_ATTEMPTS = 4  # workers an input may take down (first try + 3 retries) before it is given up
IN_FLIGHT = 2  # shards queued per actor, so it starts the next one without waiting for the driver
SHARDS_PER_WORKER = 8  # enough shards that the tail of the run stays balanced
MAX_SHARD = 64
STARTUP_SECONDS = 600  # a worker waits this long for its resources (and loads its model) at most
# With inputs left and not one worker running (every node that had room is lost), the run waits this
# long for a node with room to join, then stops; what finished is saved and the same command resumes.
NO_WORKER_SECONDS = 60
ROOM_CHECK_SECONDS = 2.0  # how often a run short of workers asks the cluster for room for another
LOCAL_OBJECT_STORE = 256 * 2**20  # rows are small; the store only needs room for a few of them
# Fields of the configuration, and of core.Run, that name files: a worker may see them under other
# (absolute) paths.
PATH_KEYS = ("model", "dataset", "labels", "split")
PATH_FIELDS = ("model", "data", "labels", "split", "denoiser", "diffusion")
# Test-only fault injection (tests/test_ray.py), read on the driver: "exit-after:K" makes worker 0's
# first actor exit as it starts its (K+1)-th input, "poison:I" makes every actor exit on input I,
# "kill-after:K" makes the driver ray.kill worker 0 after K rows have come back.
FAULT_ENV = "SRTOOL_RAY_FAULT"


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise UsageError(f"--engine ray needs Ray, which cannot be imported ({error}); "
                         f"install it with: {INSTALL_HINT}") from None
    return ray


def _count(number: float, noun: str) -> str:
    return f"{number:g} {noun}{'' if number == 1 else 's'}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _comparable(config: dict) -> dict:
    """What every worker must agree on with the driver: all that decides a number, less file paths."""
    from .results import VOLATILE

    comparable = {k: v for k, v in config.items() if k not in VOLATILE and k not in PATH_KEYS}
    if "members" in comparable:  # an ensemble's members by content, not by where they lie
        comparable["members"] = [member["model_sha256"] for member in comparable["members"]]
    if "denoiser" in comparable:  # likewise the denoiser (its sha256 stays)
        comparable["denoiser"] = {k: v for k, v in comparable["denoiser"].items() if k != "model"}
    return comparable


def _labels_digest(labels) -> str:
    return hashlib.sha256(json.dumps([int(v) for v in labels]).encode()).hexdigest()


def _ranges(indices) -> str:
    """12, 13, 14, 20 → '12–14, 20' (and only the first few runs for long lists)."""
    indices = sorted(indices)
    runs, start = [], indices[0]
    for previous, current in zip(indices, indices[1:] + [None]):
        if current != previous + 1:
            runs.append(f"{start}" if start == previous else f"{start}–{previous}")
            start = current
    return ", ".join(runs[:8]) + (f" and {len(runs) - 8} more runs" if len(runs) > 8 else "")


# An HTTP/2 client's opening (the connection preface and an empty SETTINGS frame): a Ray head's GCS
# is a gRPC server, which answers with a SETTINGS frame of its own at once.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
PROBE_SECONDS = 3.0


def _host_port(address: str) -> tuple[str, int]:
    """'HOST:PORT' (an IPv6 host in brackets) → (host, port); a one-line UsageError for anything else."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        raise UsageError(f"--address {address!r}: give the head node's HOST:PORT (e.g. 10.0.0.5:6379), "
                         "or 'auto' for the cluster this machine belongs to")
    return host, int(port)


def _check_head(address: str) -> None:
    """Refuse, within seconds, an address where no Ray head listens.

    Ray itself retries such an address for minutes, deaf to Ctrl-C. Nothing listening: the connection
    is refused. Something else listening (a web server, a database, a silent socket): it does not
    answer an HTTP/2 opening with a SETTINGS frame within PROBE_SECONDS, as any gRPC server does.
    With TLS between Ray's processes (RAY_USE_TLS) the opening would be wrong, so only the connection
    is checked there.
    """
    import socket

    host, port = _host_port(address)
    try:
        connection = socket.create_connection((host, port), timeout=PROBE_SECONDS)
    except OSError:
        raise UsageError(f"cannot reach the Ray cluster at {address} (no head node listens there)") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        answer = b""
        try:
            connection.settimeout(PROBE_SECONDS)
            connection.sendall(HTTP2_PREFACE)
            while len(answer) < 9:
                chunk = connection.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError:  # a timeout, or the other side reset the connection
            pass
    if len(answer) < 9 or answer[3] != 4:  # frame type 4: SETTINGS
        raise UsageError(f"no Ray head node at {address}: something else listens there (it does not answer "
                         "as Ray's GCS server does); give the head's GCS port (ray start --head --port)")


# -- the actor ---------------------------------------------------------------------------------------

class Worker:
    """One Ray actor: the run's engine rebuilt from its description; evaluates shards of inputs.

    Wrapped with ray.remote only when the engine runs, so importing this module never imports Ray.
    """

    def __init__(self, runs: tuple[str, object, object], start, fault: tuple[str, int] | None = None):
        # `start` is core.start, handed over by the driver: this module runs what it is given and
        # never imports core back (core imports it to choose the engine).
        # An error here would kill the actor and reach the driver as an opaque death, so it is kept
        # and reported by describe(): a worker that cannot start stops the run with its message.
        self.error, self.fault, self.started = None, fault, 0
        folder, as_given, absolute = runs
        if os.path.isdir(folder):  # the driver's folder (same machine, shared file system): paths as
            os.chdir(folder)       # given, so even the `path` column is the driver's, byte for byte
            run = as_given
        else:
            run = absolute
        try:
            self.job = start(run, worker=True)
            self.config = self.job.config
        except UsageError as error:
            self.error = str(error)
        except Exception as error:
            self.error = f"{type(error).__name__}: {_first_line(error)}"

    def describe(self) -> dict:
        import socket

        where = f"{socket.gethostname()} (pid {os.getpid()})"
        if self.error is not None:
            return {"error": self.error, "where": where}
        job = self.job
        return {"error": None, "where": where, "device": job.counter.device,
                "config": _comparable(self.config), "inputs": len(job.dataset),
                "labels": _labels_digest(job.dataset.labels)}

    def evaluate(self, indices: list[int]):
        """(row, {"calls", "copies"} since the previous row) for each input, as it finishes."""
        from .pipeline import evaluate_all

        job = self.job

        def items():
            for index in indices:
                if self.fault in (("poison", index), ("exit-after", self.started)):  # test-only fault injection
                    os._exit(1)
                self.started += 1
                yield job.dataset[index]

        counter = job.counter
        calls, copies = counter.calls, counter.copies
        for row in evaluate_all(items(), job.plan, counter, job.settings):
            yield row, {"calls": counter.calls - calls, "copies": counter.copies - copies}
            calls, copies = counter.calls, counter.copies


# -- the driver ----------------------------------------------------------------------------------------

@dataclass
class _Task:
    generator: object  # ray.ObjectRefGenerator of rows
    shard: list[int]
    received: set[int] = field(default_factory=set)


@dataclass
class _Slot:
    number: int
    handle: object = None
    starting: object = None  # the describe() reference while the actor starts
    since: float = field(default_factory=time.monotonic)
    tasks: list[_Task] = field(default_factory=list)  # in submission order = execution order


def _parse_fault(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    kind, _, value = text.partition(":")
    if kind not in ("exit-after", "poison", "kill-after") or not value.isdigit():
        raise UsageError(f"{FAULT_ENV} must be exit-after:K, poison:I or kill-after:K (a test hook)")
    return kind, int(value)


class RayEngine:
    def __init__(self, run, start, quiet: bool = False):
        self.start_local = start  # core.start: builds a local job from a core.Run (the driver's and the workers')
        self.run = run  # the workers' description of the run (core.Run); ranges already checked
        runtime = run.runtime
        self.address, self.quiet = runtime.address, quiet
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))
        if self.address is not None:  # checked now, before the driver writes anything
            if self.address.startswith("ray://"):
                raise UsageError("--address takes the head node's HOST:PORT (run srtool on a node of the "
                                 "cluster); Ray Client (ray://) addresses are not supported")
            if self.address != "auto":  # 'auto': Ray finds the cluster of this machine, or says there is none
                _check_head(self.address)
        self.requested_device = runtime.device
        self.cpus = runtime.cpus_per_worker or 1.0
        self.ray = None
        self.started_ray = False
        self.slots: list[_Slot] = []
        self.replacements = 0
        # Ray already running in this process (a notebook, a test): use it, and leave it running.
        self.already_up = getattr(sys.modules.get("ray"), "is_initialized", lambda: False)()
        if self.address is None and not self.already_up:
            self._local_auth()
        self.ray = _import_ray()  # fails here, before anything is written, when Ray is missing

    @staticmethod
    def _local_auth() -> None:
        """Token authentication for the local Ray of this run, with a token that never leaves it.

        Ray (2.59+) turns token authentication on for a new local cluster, writes a token to
        ~/.ray/auth_token and warns. Ray's docs allow the token in RAY_AUTH_TOKEN instead: set with
        RAY_AUTH_MODE=token, it is used as is, nothing goes to the home folder and there is no warning.
        Ray reads the mode when it is imported and caches the token, so where Ray was imported
        before in this process both are read again (as Ray itself does when it enables the mode).
        """
        if any(name in os.environ for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
            return  # the user's own choice
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        if sys.modules.get("ray") is not None:
            try:
                from ray._raylet import AuthenticationTokenLoader, Config
                Config.initialize("")
                AuthenticationTokenLoader.instance().reset_cache()
            except Exception:  # older Ray without token authentication: nothing to refresh
                pass

    def _say(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"ray: {message}", err=True)

    # -- start ---------------------------------------------------------------------------------------
    def start(self):
        """The run started on the driver as a local one, then the workers (only if there is work)."""
        from dataclasses import replace

        # The driver's own session only checks that the model runs on the plan (and counts its
        # classes); the actors do the work. On the CPU it never takes a GPU from a worker, and a
        # head node without a GPU can drive GPU workers.
        driver = replace(self.run, runtime=replace(self.run.runtime, engine="local", address=None, workers=None,
                                                   gpus_per_worker=None, cpus_per_worker=None, device="cpu"))
        job = self.start_local(driver)
        if job.todo:
            try:
                self._start(job.config, job.dataset, len(job.todo))
            except BaseException:
                self._stop()
                job.close()
                raise
        job.executor = self.execute
        return job

    def _worker_runs(self, gpus: float) -> tuple[str, object, object]:
        """The driver's folder, the workers' run, and the same with absolute paths for workers without it."""
        from dataclasses import replace

        runtime = self.run.runtime
        # A worker without a GPU of its own must not try CUDA on a GPU node ('auto' would see one).
        device = "cpu" if self.requested_device == "auto" and not gpus else self.requested_device
        # one ORT thread per CPU Ray gives the actor, not per core
        threads = runtime.threads or max(1, math.floor(self.cpus))
        worker = replace(self.run, runtime=replace(runtime, engine="local", address=None, workers=None,
                                                   gpus_per_worker=None, cpus_per_worker=None,
                                                   device=device, threads=threads))
        def resolved(value):  # a path, or the paths of an ensemble's members
            if isinstance(value, tuple):
                return tuple(resolved(v) for v in value)
            return str(Path(value).resolve()) if value is not None and Path(value).exists() else value

        absolute = replace(worker, **{name: resolved(getattr(worker, name)) for name in PATH_FIELDS})
        return os.getcwd(), worker, absolute

    def _start(self, config: dict, dataset, inputs: int) -> None:
        ray = self.ray
        if self.already_up:
            where = "the Ray of this process"
        elif self.address is None:
            # A Ray for this run only: no dashboard; CPUs enough for the workers asked for.
            cpus = os.cpu_count() or 1
            if self.run.runtime.workers:
                cpus = max(cpus, math.ceil(self.run.runtime.workers * self.cpus))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING", object_store_memory=LOCAL_OBJECT_STORE)
            self.started_ray, where = True, "a local Ray"
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
            except Exception as error:
                raise UsageError(f"cannot join the Ray cluster at {self.address}: {_first_line(error)}") from None
            self.started_ray, where = True, f"the Ray cluster at {self.address}"
        resources = ray.cluster_resources()
        gpus_there, cpus_there = resources.get("GPU", 0), resources.get("CPU", 0)
        gpus = self.run.runtime.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if gpus_there and self.requested_device != "cpu" else 0.0
        if self.requested_device == "cuda" and not gpus:
            raise UsageError("--device cuda needs GPUs for the Ray workers: the cluster has none, "
                             "or pass --gpus-per-worker")
        workers = self.run.runtime.workers
        if workers is None:
            fits = gpus_there // gpus if gpus else cpus_there // self.cpus
            workers = int(max(1, min(fits, inputs)))
        if workers * gpus > gpus_there or workers * self.cpus > cpus_there:
            raise UsageError(f"{where} has {_count(cpus_there, 'CPU')} and {_count(gpus_there, 'GPU')}: not "
                             f"enough for {_count(workers, 'worker')} of {_count(self.cpus, 'CPU')} and "
                             f"{_count(gpus, 'GPU')}")
        self.actor = ray.remote(Worker).options(
            num_cpus=self.cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD")  # one worker per node first: more memory and bus per worker
        self.worker_runs = self._worker_runs(gpus)
        self.expected = {"config": _comparable(config), "inputs": len(dataset),
                         "labels": _labels_digest(dataset.labels)}
        self.workers = workers
        self.gpus = gpus
        self.slots = [self._launch(number) for number in range(workers)]
        self.max_replacements = MAX_ATTEMPTS * workers  # bounded: a cluster that kills everything ends
        devices = set()
        for slot in self.slots:  # every worker must start, and agree with the driver, before any work
            ready, _ = ray.wait([slot.starting], timeout=STARTUP_SECONDS)
            if not ready:
                raise UsageError(f"Ray worker {slot.number} did not start within {STARTUP_SECONDS // 60} "
                                 f"minutes ({where} is busy, or lacks {self.cpus:g} CPUs and {gpus:g} GPUs free)")
            try:
                devices.add(self._check_started(slot, ray.get(slot.starting)))
            except ray.exceptions.RayError as error:
                raise UsageError(f"Ray worker {slot.number} died while starting: {_first_line(error)}") from None
            slot.starting = None
        config["device"] = "+".join(sorted(devices))  # what did the work, as the local engine records
        self._say(f"{_count(workers, 'worker')} ({config['device']}, {_count(self.cpus, 'CPU')} and "
                  f"{_count(gpus, 'GPU')} each) on {where}")

    def _launch(self, number: int) -> _Slot:
        first = self.replacements == 0 and number == 0
        fault = self.fault if self.fault and (self.fault[0] == "poison" or
                                              (self.fault[0] == "exit-after" and first)) else None
        handle = self.actor.remote(self.worker_runs, self.start_local, fault)
        return _Slot(number, handle, handle.describe.remote())

    def _room_for_another(self) -> bool:
        """Whether the cluster as it is now (lost nodes gone from its resources) can hold one worker
        more than those the run has. Ray would queue an actor it cannot place, and wait for ever."""
        try:
            total = self.ray.cluster_resources()
        except Exception:  # the cluster is going away too: no replacement
            return False
        workers = len(self.slots) + 1
        return workers * self.cpus <= total.get("CPU", 0) and workers * self.gpus <= total.get("GPU", 0)

    def _check_started(self, slot: _Slot, described: dict) -> str:
        if described["error"] is not None:
            raise UsageError(f"Ray worker on {described['where']}: {described['error']}")
        differs = [k for k in self.expected if described[k] != self.expected[k]]
        if differs:
            if "config" in differs:
                theirs, ours = described["config"], self.expected["config"]
                differs += sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
                differs.remove("config")
            raise UsageError(f"Ray worker on {described['where']} sees another model or dataset "
                             f"({', '.join(differs)}); every node must see the same files at the same paths")
        return described["device"]

    def _stop(self) -> None:
        ray = self.ray
        if ray is None or not ray.is_initialized():
            return
        for slot in self.slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:
                pass
        self.slots = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    # -- run -----------------------------------------------------------------------------------------
    def execute(self, dataset, todo, plan, counter, settings, writer, on_row=lambda row: None) -> None:
        """pipeline.run's contract over Ray: every input of `todo` evaluated, each row written once."""
        try:
            if todo:
                start = time.perf_counter()
                self._dispatch(list(todo), writer, on_row)
                seconds = time.perf_counter() - start  # Ray's start is not in it: the scaling number
                self._say(f"{len(todo)} inputs in {seconds:.1f} s, {len(todo) / seconds:.2f} inputs/s "
                          f"on {_count(self.workers, 'worker')}")
        except BaseException:
            writer.flush()  # whatever stops the run, every row that came back is kept
            raise
        finally:
            self._stop()

    def _dispatch(self, todo: list[int], writer, on_row) -> None:
        ray = self.ray
        size = max(1, min(MAX_SHARD, math.ceil(len(todo) / (len(self.slots) * SHARDS_PER_WORKER))))
        queue = deque(todo[start:start + size] for start in range(0, len(todo), size))
        attempts: dict[int, int] = {}
        failed: dict[int, str] = {}
        written: set[int] = set()
        owner: dict = {}  # generator or describe reference → (slot, task or None)
        kill_after = self.fault[1] if self.fault and self.fault[0] == "kill-after" else None

        def lost(slot: _Slot, error: BaseException) -> None:
            """The actor is gone: requeue its unfinished inputs, charge the one it was on, replace it."""
            reason = _first_line(error)
            requeue, charged = [], False
            for task in slot.tasks:
                remaining = [i for i in task.shard if i not in task.received and i not in written]
                if remaining and not charged:  # the oldest task is the one the actor was running
                    charged = True
                    index, remaining = remaining[0], remaining[1:]
                    attempts[index] = attempts.get(index, 0) + 1
                    if attempts[index] >= MAX_ATTEMPTS:
                        failed[index] = reason
                    else:
                        requeue.append([index])  # alone, so a poison input only ever costs itself
                    # The others of that shard may have been in flight with it (which one killed the
                    # worker is unknown): each alone too, so the culprit is charged on its next death.
                    requeue += [[other] for other in remaining]
                    remaining = []
                if remaining:
                    requeue.append(remaining)
            for shard in reversed(requeue):  # at the front, in input order
                queue.appendleft(shard)
            for task in slot.tasks:
                owner.pop(task.generator, None)
            owner.pop(slot.starting, None)
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:
                pass
            self.slots.remove(slot)
            self.replacements += 1
            if self.replacements > self.max_replacements:
                self._say(f"worker {slot.number} lost ({reason}); no more replacements")
            elif self._room_for_another():
                replace(slot.number)
                self._say(f"worker {slot.number} lost ({reason}); its inputs go back to the queue")
            else:  # the node went with it: go on with the workers left, take one later if room appears
                missing.append(slot.number)
                self._say(f"worker {slot.number} lost ({reason}); its inputs go back to the queue, "
                          f"{_count(len(self.slots), 'worker')} go on (no room for a replacement now)")

        def replace(number: int) -> None:
            replacement = self._launch(number)
            self.slots.append(replacement)
            owner[replacement.starting] = (replacement, None)

        missing: list[int] = []  # workers lost with no room to replace them (yet)
        room_checked = no_worker_since = time.monotonic()
        while True:
            for slot in self.slots:
                while slot.starting is None and len(slot.tasks) < IN_FLIGHT and queue:
                    shard = queue.popleft()
                    # "streaming": the rows come back one by one as they are yielded (a generator)
                    task = _Task(slot.handle.evaluate.options(num_returns="streaming").remote(shard), shard)
                    slot.tasks.append(task)
                    owner[task.generator] = (slot, task)
            if not queue and not any(slot.tasks for slot in self.slots):
                break  # all done: a replacement still starting is not waited for (_stop ends it)
            now = time.monotonic()
            if missing and queue and now - room_checked > ROOM_CHECK_SECONDS:
                room_checked = now
                if self._room_for_another():  # a node has joined, or other work has freed room
                    number = missing.pop(0)
                    replace(number)
                    self._say(f"the cluster has room again: worker {number} replaced")
            if any(slot.starting is None for slot in self.slots):
                no_worker_since = now
            elif now - no_worker_since > NO_WORKER_SECONDS or not (owner or missing):
                break  # work left and no worker to do it; the error below names the inputs
            if not owner:
                time.sleep(0.5)  # only waiting for room: nothing to wait on in Ray
                continue
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=1.0)  # a timeout keeps Ctrl-C prompt
            for slot in [other for other in self.slots if other.starting is not None
                         and other.starting not in ready and time.monotonic() - other.since > STARTUP_SECONDS]:
                owner.pop(slot.starting, None)  # a replacement that cannot be placed: do without it
                self.slots.remove(slot)
                ray.kill(slot.handle, no_restart=True)
                self._say(f"worker {slot.number} did not start within {STARTUP_SECONDS // 60} minutes; "
                          "going on without it")
            for waitable in ready:
                if waitable not in owner:  # dropped by lost() earlier in this loop
                    continue
                slot, task = owner[waitable]
                if task is None:  # a replacement actor has started (or not)
                    del owner[waitable]
                    try:
                        self._check_started(slot, ray.get(waitable))
                        slot.starting = None
                    except ray.exceptions.RayTaskError as error:
                        raise UsageError(f"Ray worker: {_first_line(error.cause or error)}") from None
                    except ray.exceptions.RayError as error:
                        lost(slot, error)
                    continue
                try:
                    row, usage = ray.get(next(waitable))
                except StopIteration:
                    del owner[waitable]
                    slot.tasks.remove(task)
                    continue
                except ray.exceptions.RayTaskError as error:  # srtool itself failed in the worker
                    cause = error.cause
                    if isinstance(cause, UsageError) or cause is None:
                        raise UsageError(_first_line(cause or error)) from None
                    raise cause from None
                except ray.exceptions.RayError as error:  # the worker died, or its node
                    lost(slot, error)
                    continue
                task.received.add(row["index"])
                if row["index"] in written:  # never twice, whatever a retry returned
                    continue
                written.add(row["index"])
                writer.count_calls(usage["calls"], usage["copies"])
                writer.add(row)
                on_row(row)
                if kill_after is not None and len(written) == kill_after:  # test-only fault injection
                    ray.kill(self.slots[0].handle, no_restart=True)
        left = [i for shard in queue for i in shard]
        if failed or left:
            problems = []
            if failed:
                reasons = "; ".join(sorted(set(failed.values())))[:200]
                problems.append(f"inputs {_ranges(list(failed))} failed on {MAX_ATTEMPTS} Ray workers ({reasons})")
            if left:
                problems.append(f"inputs {_ranges(left)} not done: {self.replacements} Ray workers were lost "
                                f"and none could be placed in their stead within {NO_WORKER_SECONDS} s")
            raise UsageError("; ".join(problems) + "; finished inputs are saved, run the same command "
                             "to retry the rest")
