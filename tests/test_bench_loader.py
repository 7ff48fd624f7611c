"""`faceshard bench loader` streams every written row and reports both rates (small N; the 1M run is a benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from faceshard.app.cli import app


def test_bench_loader_reports_loader_and_raw_rates(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["bench", "loader", "--rows", "2500", "--out", str(tmp_path / "b"), "--workers", "0", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert result["rows"] == 2500 and result["videos"] == 25
    assert result["rows_per_s"] > 0 and result["raw_rows_per_s"] > 0
    assert abs(result["ratio"] - result["rows_per_s"] / result["raw_rows_per_s"]) < 0.01
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["write_s"] is None and again["rows"] == 2500  # the same output is reused
    other = runner.invoke(app, [*args[:3], "3000", *args[4:]])
    assert other.exit_code == 3 and "choose a new --out" in other.output
