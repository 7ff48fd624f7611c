"""`faceshard bench …`: benchmarks that print measured ratios (two things compared in one run) and JSON.

Each benchmark is one module here registering one command on `app` (a typer sub-app of the CLI).
"""

from __future__ import annotations

import typer

from faceshard.bench.command_build import build
from faceshard.bench.sources import sources
from faceshard.bench.startup import startup

app = typer.Typer(
    name="bench",
    help="Benchmarks: measured, paired ratios printed and written as JSON.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("build")(build)
app.command("startup")(startup)
app.command("sources")(sources)
