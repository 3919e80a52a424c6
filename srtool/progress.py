"""A progress bar over a started run (srtool.core.Job), for the command line and the Python API."""

from __future__ import annotations

from contextlib import contextmanager


def execute_with_progress(job) -> None:
    """Run the job's inputs with a bar that shows accuracy (labelled inputs) and ACR as they come."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if not job.todo:  # a finished run run again: no bar stuck at 0/0
        job.execute()
        return
    mode = job.settings.mode
    tally = {"done": 0, "labelled": 0, "correct": 0, "radius": 0.0}

    def status() -> str:
        if not tally["labelled"]:
            return ""
        accuracy = tally["correct"] / tally["labelled"]
        if mode == "certify":
            return f"acc {accuracy:.1%}  ACR {tally['radius'] / tally['labelled']:.3f}"
        return f"acc {accuracy:.1%}"

    with Progress(TextColumn(f"[bold]{mode}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task(mode, total=len(job.todo), status="")

        def on_row(row: dict) -> None:
            if row["error"] is None and row["label"] >= 0:
                tally["labelled"] += 1
                tally["correct"] += row["correct"]
                tally["radius"] += (row["radius"] or 0.0) * row["correct"]
            progress.update(task, advance=1, status=status())

        job.execute(on_row)


@contextmanager
def bench_progress(quiet: bool = False):
    """`srtool bench`'s progress on stderr: yields on_step(done, total, what) for srtool.bench.run."""
    if quiet:
        yield lambda done, total, what: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=None, what="")
        yield lambda done, total, what: progress.update(task, completed=done, total=total, what=what)
