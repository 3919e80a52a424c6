"""Fill and throughput of the scheduler of copies (issue 23): copies per ONNX Runtime call, copies per
second and peak memory, for the code checked out in a folder (this one, or an older commit's).

    python benchmarks/scheduler.py FOLDER NAME [--in-flight N]    # one case; appends to runs/scheduler.jsonl

Cases (CPU, --batch 4096, the shipped Fashion-MNIST model at σ = 0.25, Debian's test images):
  grid  — the sequential benchmark's grid run: --sequential --radii σ,2σ,3σ, n = 100,000, every 50th image (200)
  small — a fixed run, n0 = 100, n = 1,000, the first 500 images
  fixed — a fixed run, n0 = 100, n = 100,000, the first 4 images (the throughput to match)

Copies per call: the run's `calls`/`copies` metadata where srtool records it; for code older than
that, computed from the rows with that code's own call sizes (engine.call_sizes, one input at a time:
selection, then the estimation sample or each sequential round). Peak memory and CPU seconds (user +
system, start-up included): /usr/bin/time -v. On a shared machine copies per CPU second move less
with the load than copies per wall second.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
BATCH = 4096
CASES = {
    "grid": ["--sequential", "--radii", "0.25,0.5,0.75", "--n", "100000", "--skip", "50"],
    "small": ["--n0", "100", "--n", "1000", "--max", "500"],
    "fixed": ["--n0", "100", "--n", "100000", "--max", "4"],
}


def old_calls(folder: Path, table, config: dict) -> int:
    """Calls the one-input-at-a-time engine made for these rows (its call_sizes, its loops)."""
    sys.path.insert(0, str(folder))
    from srtool.engine import call_sizes, cpu_cores
    from srtool.sequential import SequentialTest

    loops = config["threads"] or cpu_cores()
    calls = 0
    for row in table.to_pylist():
        requests = [config["n0"]]
        if config.get("sequential"):
            seq = config["sequential"]
            test = SequentialTest(alpha=config["alpha"], budget=seq["budget"], sigma=config["sigma"],
                                  radii=tuple(seq["radii"]), method=seq["method"])
            points = [p for p in test.checkpoints() if p <= row["n"]]
            requests += [b - a for a, b in zip([0] + points, points)]
        else:
            requests.append(row["n"])
        calls += sum(len(list(call_sizes(r, config["batch"], loops))) for r in requests)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("--in-flight", type=int, default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    out = Path("/tmp") / f"sched-{args.case}-{folder.name}-{args.in_flight}.parquet"
    srtool_args = ["certify", "--images", IMAGES, *CASES[args.case], "--batch", str(BATCH),
                   "--out", str(out), "--overwrite", "--quiet"]
    if args.in_flight is None:
        command = [sys.executable, "-m", "srtool", *srtool_args]
    else:  # no command-line option: the Runtime field, through the CLI's own parsing
        command = [sys.executable, "-c", "import sys, srtool.engine as e; e.MAX_IN_FLIGHT = int(sys.argv[1]); "
                   "from srtool.cli import main; main(sys.argv[2:])", str(args.in_flight), *srtool_args]
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    cpu_s = sum(float(re.search(rf"{what} time \(seconds\): ([\d.]+)", done.stderr).group(1))
                for what in ("User", "System"))
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    config = json.loads(table.schema.metadata[b"srtool"])
    copies = sum(config["n0"] + n for n in table.column("n").to_pylist())
    calls = config["calls"] if "calls" in config else old_calls(folder, table, config)
    compute = sum(table.column("time_s").to_pylist())
    result = {"case": args.case, "code": args.label or folder.name, "in_flight": args.in_flight,
              "inputs": table.num_rows, "batch": config["batch"], "copies": copies, "calls": calls,
              "copies_per_call": copies / calls, "fill": copies / calls / config["batch"],
              "wall_s": wall, "copies_per_s": copies / wall, "cpu_s": cpu_s, "copies_per_cpu_s": copies / cpu_s,
              "peak_mb": peak_kb / 1024,
              "acc": sum(table.column("correct").to_pylist()) / table.num_rows}
    print(json.dumps(result))
    with open(Path(__file__).resolve().parent.parent / "runs" / "scheduler.jsonl", "a") as log:
        log.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
