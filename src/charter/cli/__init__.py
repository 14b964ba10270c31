"""The `charter` command line: a thin layer over the same Python API users import."""

from __future__ import annotations

import gc
import signal
import sys
from typing import TYPE_CHECKING

import typer

from charter import __version__
from charter.cli import catalog, data, evals, report, revise, status
from charter.cli import rl as rl_commands
from charter.cli import run as run_command
from charter.cli import runs as runs_command
from charter.cli import scale as scale_commands
from charter.cli.common import user_errors

if TYPE_CHECKING:
    from charter.session import RunInterrupted

app = typer.Typer(
    name="charter",
    help="Constitutional AI: critique/revision data, AI-feedback labels and training, stored in DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Constitutional AI toolkit."""


revise.register(app)
data.register(app)
catalog.register(app)
scale_commands.register(app)
rl_commands.register(app)
run_command.register(app)
report.register(app)
evals.register(app)
status.register(app)
runs_command.register(app)


def _register_plugin_commands() -> None:
    from charter.plugins import plugin_manager

    plugin_manager().hook.register_commands(app=app)


def _tune_gc() -> None:
    # A run allocates a few dozen short-lived objects per call on top of a large, permanent heap
    # (the imported modules). With Python's default thresholds (700, 10, 10) the collector ran ~300
    # times in a 1,500-call run and rescanned that heap in each older-generation pass: 10-13 % of the
    # run's CPU (benchmarks/bench_client_ceiling.py). Objects alive now stay alive (freeze), and young
    # ones are collected every 50,000 allocations. Only the process entry does this: a library (or a
    # test calling `invoke`) must not retune its host's collector.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main() -> None:
    """The `charter` command (and `python -m charter`): `invoke` in a process tuned for a run."""
    _tune_gc()
    invoke()


def invoke() -> None:
    """Run the command line in this process (what tests call): user errors are one line and exit
    status 2, run-time failures 1."""
    _register_plugin_commands()
    try:
        # Without standalone mode, typer returns the code of a `typer.Exit(n)` instead of exiting.
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit code 130
            _interrupted(signal.SIGINT)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("charter: aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:
        # typer vendors click; its usage errors are TyperExceptions with format_message/exit_code.
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(message)  # bare `charter` (or a group): the help text, as asked
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        # One line, as for every other bad input (click's default is a usage block plus a hint).
        typer.echo(f"charter: error: {where}{message}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    # The classes below are imported only when an exception reaches their clause (fast --help).
    except user_errors() as exc:
        typer.echo(f"charter: error: {exc}", err=True)
        sys.exit(2)
    except _store_write_error() as exc:
        typer.echo(f"charter: error: {exc}", err=True)
        sys.exit(1)
    except _run_interrupted() as exc:
        _interrupted(exc.signum)
    except KeyboardInterrupt:
        _interrupted(signal.SIGINT)


def _store_write_error() -> type[BaseException]:
    from charter.store.store import StoreWriteError

    return StoreWriteError


def _run_interrupted() -> type[RunInterrupted]:
    from charter.session import RunInterrupted

    return RunInterrupted


def _interrupted(signum: int) -> None:
    # Ctrl-C (exit 130) or SIGTERM (143): what finished is committed and the run marked interrupted.
    typer.echo("charter: interrupted; the same command resumes (what finished is saved)", err=True)
    sys.exit(128 + int(signum))
