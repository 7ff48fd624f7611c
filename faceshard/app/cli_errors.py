"""How `faceshard` fails: one line on stderr (or one JSON object under `--json`) and a documented code.

Every command runs inside `FrontDoorGroup.invoke`, the one place that turns an exception into what
the user reads: `error: <message>` naming the thing and what to do, with the exit code of
`faceshard.errors.ExitCode`; the traceback only with `--verbose` (anywhere on the command line) or
`FACESHARD_VERBOSE=1`. Commands raise (or call `fail`) and never print their own errors, so a
command added later fails the same way without doing anything.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from faceshard.errors import DamagedOutput, ExitCode, OutputBusy, StorageError, UserError

JSON_FLAG = "--json"
VERBOSE_FLAG = "--verbose"
_META_JSON = "faceshard.json"
_META_VERBOSE = "faceshard.verbose"


def _loaded(module: str, name: str) -> type | None:
    """A class of a module that is already imported (an exception of an unimported module's class
    cannot exist), so classifying never imports torch or polars."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is(exc: BaseException, *names: tuple[str, str]) -> bool:
    return any((cls := _loaded(m, n)) is not None and isinstance(exc, cls) for m, n in names)


def _os_message(exc: OSError) -> str:
    """`<path>: <what is wrong>` for the file errors a user causes (a folder given for a file, …)."""
    what = {
        IsADirectoryError: "is a folder, not a file",
        NotADirectoryError: "is a file (or under one), not a folder",
        FileNotFoundError: "does not exist",
        PermissionError: "cannot be written or read (permission denied)",
    }.get(type(exc), exc.strerror or str(exc))
    return f"{exc.filename}: {what}" if exc.filename else str(exc)


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """(exit code, message) of an exception that ends a command."""
    if isinstance(exc, UserError):
        return exc.code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted; nothing committed is lost (run the same command to resume)"
    if isinstance(exc, OutputBusy):
        return ExitCode.BUSY, str(exc)
    if isinstance(exc, DamagedOutput):
        return ExitCode.DAMAGED, str(exc)
    if _is(exc, ("faceshard.models.registry", "WeightsUnavailableError")):
        return ExitCode.NO_WEIGHTS, f"{exc} `faceshard weights` lists what each preset needs."
    if isinstance(exc, StorageError) or _is(
        exc,
        ("faceshard.config", "ConfigError"),
        ("faceshard.storage.reader", "MissingColumnsError"),
        ("faceshard.training.loop", "TrainingError"),
    ):
        return ExitCode.BAD_INPUT, str(exc)
    if isinstance(exc, OSError):
        return ExitCode.BAD_INPUT, _os_message(exc)
    if isinstance(exc, KeyError):  # a missing column or key: its argument is the message
        return ExitCode.BAD_INPUT, str(exc.args[0]) if exc.args else repr(exc)
    if isinstance(exc, ValueError):
        return ExitCode.BAD_INPUT, str(exc)
    return (
        ExitCode.INTERNAL,
        f"internal error ({type(exc).__name__}: {exc}); rerun with --verbose and report the traceback",
    )


def fail(message: str, code: ExitCode | None = None) -> NoReturn:
    """Refuse with `message`; the code is `code`, else that of the exception being handled, else 3."""
    current = sys.exc_info()[1]
    if current is not None:
        known_code, known_message = classify(current)
        code = known_code if code is None else code
        message = known_message if message == str(current) else message
    raise UserError(message, ExitCode.BAD_INPUT if code is None else code) from current


SHOWN_DETAILS = 3


def one_line(message: str, verbose: bool = False) -> str:
    """A message's first line, with its detail lines (e.g. which settings differ) folded in: the
    first few, and how many more `--verbose` shows."""
    first, *rest = [line.strip() for line in message.splitlines() if line.strip()] or [""]
    if not rest:
        return first
    shown = rest if verbose else rest[:SHOWN_DETAILS]
    more = len(rest) - len(shown)
    return f"{first} {'; '.join(shown)}" + (f" (+{more} more with --verbose)" if more else "")


def emit_error(message: str, code: int, as_json: bool, verbose: bool = False) -> None:
    """Print one refusal: a JSON object on stdout under --json, else one `error: …` line on stderr."""
    if as_json:
        kind = ExitCode(code).name.lower() if code in ExitCode._value2member_map_ else "error"
        print(json.dumps({"error": message, "code": int(code), "kind": kind}))
        return
    typer.echo(f"error: {one_line(message, verbose)}", err=True)


def _own_args(args: list[str]) -> list[str]:
    return args[: args.index("--")] if "--" in args else args


class FrontDoorGroup(TyperGroup):
    """The top-level group: lifts `--verbose` from anywhere, and turns errors into one line + a code."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        own = _own_args(args)
        ctx.meta[_META_VERBOSE] = VERBOSE_FLAG in own or os.environ.get("FACESHARD_VERBOSE", "") == "1"
        ctx.meta[_META_JSON] = JSON_FLAG in own
        if VERBOSE_FLAG in own:
            args = [a for a in own if a != VERBOSE_FLAG] + args[len(own) :]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        as_json = bool(ctx.meta.get(_META_JSON))
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except TyperException as exc:  # click's usage errors (typer vendors click)
            if not as_json:
                raise  # printed with the usage line, exit 2
            emit_error(exc.format_message(), exc.exit_code, as_json=True)
            ctx.exit(exc.exit_code)
        except (Exception, KeyboardInterrupt) as exc:
            code, message = classify(exc)
            verbose = bool(ctx.meta.get(_META_VERBOSE))
            if verbose:
                traceback.print_exc(file=sys.stderr)
            emit_error(message, code, as_json, verbose)
            ctx.exit(int(code))
