"""Regenerate the golden results tables from whatever srtool is checked out.

    cd <repository root> && python tests/golden/make_golden.py

Each case is one `srtool` command line on the shipped models and data, with a small n so that the
whole set takes about a minute on two cores. tests/test_scheduler.py runs the same commands with
other batch sizes, sampling loops and numbers of inputs in flight, and wants every table equal to
its golden one in every column but `time_s`. The script drives the command line only, so it does not
depend on how the engine groups copies into calls: run it on the code whose numbers are the
reference (after a change of the noise generator's values, say) and commit the tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name → srtool arguments (without --out, --batch, --threads); each a few inputs of a shipped demo.
CASES = {
    "rs": ["certify", "--n0", "50", "--n", "500", "--max", "8"],
    "predict": ["predict", "--n", "300", "--max", "6"],
    "mean4_random": ["certify", "--patches", "4", "--resize", "32", "--sampling", "random",
                     "--n0", "40", "--n", "400", "--max", "6"],
    "sequential_grid": ["certify", "--sequential", "--radii", "0.25,0.5,0.75", "--n", "20000",
                        "--max", "6"],
    "ensemble_consensus": ["certify", "--ensemble", "--consensus", "2", "--n0", "30", "--n", "300",
                           "--max", "6"],
    "video": ["video", "--subvideo", "16", "--n0", "5", "--n", "40", "--short", "loop"],
}
# What a golden run uses: a batch that splits every input's copies over several calls.
BATCH, THREADS = 64, 1
# Columns that may differ between two runs of the same command.
VOLATILE_COLUMNS = ("time_s",)


def command(name: str, out: Path, batch: int = BATCH, threads: int = THREADS) -> list[str]:
    return [*CASES[name], "--out", str(out), "--batch", str(batch), "--threads", str(threads),
            "--quiet", "--overwrite"]


def main() -> None:
    names = sys.argv[1:] or list(CASES)
    for name in names:
        out = HERE / f"{name}.parquet"
        args = command(name, out)
        print("srtool", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "srtool", *args], check=True)
    (HERE / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")


if __name__ == "__main__":
    main()
