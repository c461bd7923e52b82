"""The `pulse` command: one Typer app, one module per verb.

Global options pick the config file and logging; each verb loads the typed
settings (CLI flag > PULSE_ env > TOML file > default). `main` turns every
error that reaches it into a message with its fix and a documented exit code
(`EXIT_CODES`, shown by `pulse --help`), with every secret hidden: an error
text may embed the database URL, and an unexpected traceback is printed
redacted too.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from pulse import __version__
from pulse.cli import common
from pulse.errors import ConfigError, PulseError, TerminalError, TransientError

OK = 0
UNHEALTHY = 1
USAGE = 2
CONFIG = ConfigError.exit_code
UNREACHABLE = TransientError.exit_code
TERMINAL = TerminalError.exit_code
INTERNAL = 70  # sysexits.h EX_SOFTWARE
INTERRUPTED = 130

# (code, name, meaning), in the order of docs/operations.md; a test keeps the two equal.
EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (OK, "ok", "success (a `pulse run` stopped by SIGTERM that drained cleanly included)"),
    (UNHEALTHY, "check failed", "`pulse status`: the slot is missing, lost or inactive, or the pipeline's report "
                "is missing or stale; `pulse doctor`: a check is an error; a backfill or dead-letter replay "
                "did not finish"),
    (USAGE, "usage", "unknown command or option, bad option value"),
    (CONFIG, "configuration", "a bad or missing setting; the message names the key and its variable"),
    (UNREACHABLE, "dependency unreachable", "PostgreSQL, Redis, Kafka, BigQuery or the endpoint stayed "
                  "unreachable after the retries"),
    (TERMINAL, "terminal data or slot error", "retrying will not help: the slot was lost, a right or Pulse's "
               "schema is missing, a destination refused the data; the message says the fix"),
    (INTERNAL, "internal error", "an unexpected exception (a bug): its traceback is printed with secrets hidden"),
    (INTERRUPTED, "interrupted", "Ctrl-C / SIGINT where the command does not drain"),
)

_EPILOG = "Exit codes: " + ", ".join(f"{code} {name}" for code, name, _ in EXIT_CODES) + \
    " (details: docs/operations.md)."

app = typer.Typer(
    name="pulse",
    help="Stream engagement events out of PostgreSQL to BigQuery, Redis and an external HTTP system.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # Rich tracebacks print locals: a settings object holds the passwords
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pulse {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="PULSE_CONFIG", help="TOML config file."),
    log_level: Optional[str] = typer.Option(None, "--log-level", envvar="PULSE_LOG__LEVEL", help="debug|info|warning|error"),
    log_format: Optional[str] = typer.Option(None, "--log-format", envvar="PULSE_LOG__FORMAT", help="console|json"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    common.STATE.config_file = config
    if log_level:
        common.STATE.overrides.setdefault("log", {})["level"] = log_level
    if log_format:
        common.STATE.overrides.setdefault("log", {})["format"] = log_format
    common.configure_early_logging(log_level or "info", log_format or "console")


def _register() -> None:
    # Imported here so `pulse --help` stays fast and a verb's heavy client
    # library is only loaded when that verb runs.
    from pulse.cli import db, dev, generate

    app.add_typer(dev.app, name="dev")
    app.add_typer(db.app, name="db")
    app.command("generate")(generate.generate)
    for module in ("run", "produce", "consume", "upload", "backfill", "status", "doctor", "top", "board", "receiver", "dlq", "verify"):
        try:
            mod = __import__(f"pulse.cli.{module}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"pulse.cli.{module}":
                raise
            continue
        mod.register(app)


_register()


def _unreachable(exc: BaseException) -> bool:
    """A client library's own "cannot connect" error (the retries, if any, are behind it)."""
    import psycopg2

    if isinstance(exc, (psycopg2.OperationalError, ConnectionError, TimeoutError)):
        return True
    # A client library's own ConnectionError / TimeoutError classes (redis-py's are not the builtins'),
    # whichever destination's library raised it.
    return any(c.__name__ in ("ConnectionError", "TimeoutError") for c in type(exc).__mro__)


def _refused(exc: BaseException) -> bool:
    """The database refused the role a right: the operator grants it, retrying will not help."""
    import psycopg2.errors

    return isinstance(exc, psycopg2.errors.InsufficientPrivilege)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error that reached the command line."""
    if isinstance(exc, PulseError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if _unreachable(exc):
        return UNREACHABLE
    if _refused(exc):
        return TERMINAL
    return INTERNAL


def report(exc: BaseException) -> int:
    """Print `exc` for the operator, secrets hidden; return its exit code."""
    from pulse.log import redact_text

    code = exit_code_for(exc)
    if isinstance(exc, PulseError):
        kind = "transient error" if isinstance(exc, TransientError) else "error"
        typer.secho(f"pulse: {kind}: {redact_text(exc.message)}", fg="red", err=True)
        if exc.hint:
            typer.secho(f"  fix: {redact_text(exc.hint)}", err=True)
    elif code == UNREACHABLE:
        message = " ".join(str(exc).split())
        typer.secho(f"pulse: unreachable: {type(exc).__name__}: {redact_text(message)}", fg="red", err=True)
        typer.secho("  fix: check the service's URL (PULSE_DATABASE_URL, PULSE_REDIS_URL, ...), that it runs, "
                    "and that it admits this host and role", err=True)
    elif code == TERMINAL:
        message = " ".join(str(exc).split())
        typer.secho(f"pulse: error: {type(exc).__name__}: {redact_text(message)}", fg="red", err=True)
        typer.secho("  fix: run `pulse doctor` as this role: it prints the grants it lacks "
                    "(docs/deploy.md, \"Least privilege\")", err=True)
    elif code == INTERNAL:
        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(redact_text(text))
        typer.secho("pulse: internal error (a bug; please report it with the traceback above)", fg="red", err=True)
    return code


def main() -> None:
    from pulse.runtime.gc_tuning import tune_gc

    tune_gc()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except Exception as exc:  # every error leaves with its documented code, secrets hidden
        sys.exit(report(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
