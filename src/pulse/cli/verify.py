"""`pulse verify`: check that each destination equals the source; `--repair` fixes what differs.

Exit 0 when every destination matches, 1 when anything differs (2 on an
error, as every verb). docs/verify.md.
"""

from __future__ import annotations

from typing import Optional

import orjson
import typer

from pulse.verify.run import VERIFIABLE


def verify(
    since: Optional[str] = typer.Option(None, "--since", help="Start of the event_ts range, ISO 8601 (naive = UTC)."),
    until: Optional[str] = typer.Option(None, "--until", help="End of the event_ts range (exclusive), or 'now'."),
    sink: Optional[list[str]] = typer.Option(None, "--sink", help="Destination to verify (repeatable; default: "
                                             "the configured destinations that verify knows: bigquery, redis, external)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    repair: bool = typer.Option(False, "--repair", help="Fix what differs (BigQuery: backfill of the differing "
                                "ids, delete of rows the source no longer has; Redis: window rebuild; external: "
                                "backfill of the ids in no outbox), then "
                                "verify again."),
    bucket_s: Optional[int] = typer.Option(None, "--bucket-s", envvar="PULSE_VERIFY__BUCKET_S", show_default=False,
                                 help="Width of the first-level time buckets of event_ts, in seconds."),
    fanout: Optional[int] = typer.Option(None, "--fanout", envvar="PULSE_VERIFY__FANOUT", show_default=False,
                               help="Id ranges a differing bucket is split into, per step."),
    leaf_rows: Optional[int] = typer.Option(None, "--leaf-rows", envvar="PULSE_VERIFY__LEAF_ROWS", show_default=False,
                                  help="A range with at most this many rows is compared row by row."),
    settle_s: Optional[float] = typer.Option(None, "--settle-s", envvar="PULSE_VERIFY__SETTLE_S", show_default=False,
                                   help="Seconds to wait for a running sink to catch up before differing rows "
                                   "are checked again."),
    watch: bool = typer.Option(False, "--watch", help="Verify the recent range every --interval until stopped, "
                               "exporting pulse_verify_* metrics."),
    interval: Optional[str] = typer.Option(None, "--interval", envvar="PULSE_VERIFY__INTERVAL", show_default=False,
                                 help="Time between --watch rounds: 30s, 5m, 1h."),
    recent: Optional[str] = typer.Option(None, "--recent", envvar="PULSE_VERIFY__RECENT", show_default=False,
                               help="With --watch and no --since: the range verified, back from now."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="PULSE_VERIFY__METRICS_PORT",
                                               help="With --watch: serve /metrics on 127.0.0.1:PORT."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
) -> None:
    """Verify that each destination holds exactly what the source says (read-only unless --repair)."""
    from rich.console import Console

    from pulse.cli import common
    from pulse.cli.backfill import parse_ts
    from pulse.errors import ConfigError
    from pulse.verify.report import render
    from pulse.verify.run import Options, run_verify

    from pulse.sinks import pipeline_sinks

    cfg = common.settings(database={"url": database_url, "slot": slot},
                          verify={"bucket_s": bucket_s, "fanout": fanout, "leaf_rows": leaf_rows,
                                  "settle_s": settle_s, "interval": interval, "recent": recent,
                                  "metrics_port": metrics_port})
    v = cfg.verify
    bucket_s, fanout, leaf_rows, settle_s = v.bucket_s, v.fanout, v.leaf_rows, v.settle_s
    interval, recent, metrics_port = v.interval, v.recent, v.metrics_port
    names = list(sink) if sink else [s for s in pipeline_sinks(cfg, required=False) if s in VERIFIABLE]
    unknown = [n for n in names if n not in VERIFIABLE]
    if unknown:
        raise ConfigError(f"pulse verify cannot verify {', '.join(unknown)}",
                          hint=f"choose among {', '.join(VERIFIABLE)} with --sink")
    if not names:
        raise ConfigError(f"no destination to verify: none of {', '.join(VERIFIABLE)} is configured or named",
                          hint="name one with " + " / ".join(f"--sink {n}" for n in VERIFIABLE))
    opts = Options(since=parse_ts(since), until=parse_ts(until), bucket_s=bucket_s, fanout=fanout,
                   leaf_rows=leaf_rows, settle_s=settle_s)
    if watch:
        _watch(cfg, names, opts, repair, duration(interval), duration(recent), metrics_port, as_json)
        return
    results = run_verify(cfg, names, opts, repair=repair)
    if as_json:
        typer.echo(orjson.dumps({"ok": all(r.ok for r in results), "results": [r.as_dict() for r in results]},
                                option=orjson.OPT_INDENT_2).decode())
    else:
        render(results, Console())
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def duration(text: str) -> float:
    """'30s', '5m', '1h', '90' (seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)") from exc


def _watch(cfg, names, opts, repair, interval_s, recent_s, metrics_port, as_json) -> None:
    import dataclasses
    import threading
    from datetime import datetime, timedelta, timezone

    from rich.console import Console

    from pulse.cli.produce import install_stop
    from pulse.verify.report import render
    from pulse.verify.run import run_verify
    from pulse.verify.watch import watch

    if metrics_port:
        from pulse.metrics import serve

        serve("127.0.0.1", metrics_port)
    stop = threading.Event()
    install_stop(stop.set)

    def _round():
        since = opts.since or datetime.now(timezone.utc) - timedelta(seconds=recent_s)
        return run_verify(cfg, names, dataclasses.replace(opts, since=since), repair=repair)

    def _show(results) -> None:
        if as_json:
            typer.echo(orjson.dumps({"ok": all(r.ok for r in results), "results": [r.as_dict() for r in results]}
                                    ).decode())
        else:
            render(results, Console())

    watch(_round, interval_s, stop, _show, tuple(names))


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
