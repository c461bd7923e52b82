"""`pulse dev up | down | status`: the local services for development and tests."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from pulse_dev import services

app = typer.Typer(help="Local development services (PostgreSQL, Redis, Kafka, BigQuery emulator).", no_args_is_help=True)
console = Console(width=None if __import__("sys").stdout.isatty() else 160)


def _table(rows: list[dict]) -> Table:
    table = Table(title="Pulse local services (127.0.0.1)")
    for col in ("service", "running", "version", "port", "pid", "data folder", "log file"):
        table.add_column(col, overflow="fold")
    for row in rows:
        extra = row.get("extra") or {}
        port = str(row.get("port", "-"))
        for key in ("grpc_port", "controller_port"):
            if key in extra:
                port += f" (+{extra[key]})"
        table.add_row(
            row["name"], "yes" if row.get("running") else "no", str(row.get("version", "-")), port,
            str(row.get("pid") or "-"), str(row.get("data_dir", "-")), str(row.get("log_file", "-")),
        )
    return table


@app.command("up")
def up(
    only: list[str] = typer.Option(list(services.ALL), "--only", help="Services to start (repeatable)."),
) -> None:
    """Install what is missing, start the services idempotently, write .pulse/services.env."""
    services.up(tuple(only))
    console.print(_table(services.status()))
    console.print(f"environment: source {services.state_dir() / 'services.env'}")


@app.command("down")
def down() -> None:
    """Stop exactly the processes `pulse dev up` started (by PID)."""
    stopped = services.down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (one object per service)."),
) -> None:
    """Each service's version, port, PID, data folder and log file."""
    rows = services.status()
    if as_json:
        import orjson

        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
        return
    console.print(_table(rows))


@app.command("env")
def env() -> None:
    """Print the export lines of .pulse/services.env."""
    typer.echo((services.state_dir() / "services.env").read_text(), nl=False)


@app.command("demo")
def demo(
    rate: float = typer.Option(200.0, "--rate", help="Live events per second."),
    seconds: float = typer.Option(15.0, "--seconds", help="How long to write live traffic."),
) -> None:
    """The whole pipeline on the local services, then stop what it started (`make demo`)."""
    from pulse_dev import demo as demo_mod

    demo_mod.run(rate, seconds)
