"""Helpers shared by the CLI-level tests (test_cli.py, test_ray.py)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from srtool.cli import main


def srtool(*args, capsys=None) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def read(path):
    """A finished results file: (table, its srtool configuration)."""
    table = pq.read_table(path)
    return table, json.loads(table.schema.metadata[b"srtool"])
