"""The `pulse` command: one Typer app, one module per verb.

Global options pick the config file and logging; each verb loads the typed
settings (CLI flag > PULSE_ env > TOML file > default) and turns a
`PulseError` into a one-line message with its fix and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from pulse.cli import common
from pulse.errors import PulseError, TerminalError

app = typer.Typer(
    name="pulse",
    help="Stream engagement events out of PostgreSQL to BigQuery, Redis and an external HTTP system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="PULSE_CONFIG", help="TOML config file."),
    log_level: Optional[str] = typer.Option(None, "--log-level", envvar="PULSE_LOG__LEVEL", help="debug|info|warning|error"),
    log_format: Optional[str] = typer.Option(None, "--log-format", envvar="PULSE_LOG__FORMAT", help="console|json"),
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
    for module in ("run", "produce", "consume", "upload", "backfill", "status", "doctor", "top", "receiver", "dlq", "verify"):
        try:
            mod = __import__(f"pulse.cli.{module}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"pulse.cli.{module}":
                raise
            continue
        mod.register(app)


_register()


def main() -> None:
    from pulse.runtime.gc_tuning import tune_gc

    tune_gc()
    try:
        app()
    except PulseError as exc:
        kind = "error" if isinstance(exc, TerminalError) else "transient error"
        typer.secho(f"pulse: {kind}: {exc.message}", fg="red", err=True)
        if exc.hint:
            typer.secho(f"  fix: {exc.hint}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
