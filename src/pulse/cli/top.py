"""`pulse top`: a live terminal view of the Redis board, refreshed every second.

It only reads what the Redis sink maintains (no merging of buckets on read):
the top content of the window with titles, the top per content type, events
per device and per event type, freshness (age of the newest counted event
and of the last write) and what the board did not count (late, future,
uncorrectable).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

CONTENT_TYPES = ("podcast", "newsletter", "video")


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ("" if value is None else str(value))


def snapshot(client, keys, limit: int = 10, now: float | None = None) -> dict[str, Any]:
    """One consistent-enough read of the board (a pipeline of reads; the board is maintained, not merged)."""
    from pulse.sinks.redis.board import decode_position

    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=True)  # MULTI: every read sees the same state
    pipe.zrevrange(keys.top, 0, limit - 1, withscores=True)
    pipe.zcard(keys.top)
    for ctype in CONTENT_TYPES:
        pipe.zrevrange(keys.top_type(ctype), 0, max(3, limit // 2) - 1, withscores=True)
    pipe.zrevrange(keys.devices, 0, limit - 1, withscores=True)
    pipe.zrevrange(keys.event_types, 0, -1, withscores=True)
    pipe.hgetall(keys.meta)
    pipe.hgetall(keys.stats)
    res = pipe.execute()
    top, total = res[0], res[1]
    by_type = dict(zip(CONTENT_TYPES, res[2:2 + len(CONTENT_TYPES)]))
    devices, event_types, meta, stats = res[2 + len(CONTENT_TYPES):]
    ids = {_s(m) for m, _ in top} | {_s(m) for rows in by_type.values() for m, _ in rows}
    ids_list = sorted(ids)
    pipe = client.pipeline(transaction=False)
    for cid in ids_list:
        pipe.hmget(keys.content(cid), "title", "content_type")
    if ids_list:
        pipe.zmscore(keys.events, ids_list)
    meta_rows = pipe.execute() if ids_list else []
    titles = {cid: (_s(row[0]) or cid, _s(row[1])) for cid, row in zip(ids_list, meta_rows[:len(ids_list)])}
    counts = dict(zip(ids_list, meta_rows[-1])) if ids_list else {}
    meta = {_s(k): _s(v) for k, v in meta.items()}
    newest = int(meta["newest_event_ms"]) / 1000 if meta.get("newest_event_ms") else None
    updated = int(meta["updated_ms"]) / 1000 if meta.get("updated_ms") else None
    complete_from = int(meta["complete_from_ms"]) / 1000 if meta.get("complete_from_ms") else None

    def rows(pairs):
        return [{"content_id": _s(m), "title": titles.get(_s(m), (_s(m), ""))[0],
                 "content_type": titles.get(_s(m), ("", ""))[1], "seconds": score,
                 "events": int(counts.get(_s(m)) or 0)} for m, score in pairs]

    return {
        "top": rows(top),
        "members": total,
        "by_type": {t: rows(v) for t, v in by_type.items()},
        "devices": [(_s(m), int(n)) for m, n in devices],
        "event_types": [(_s(m), int(n)) for m, n in event_types],
        "freshness_s": None if newest is None else max(0.0, now - newest),
        "last_write_s": None if updated is None else max(0.0, now - updated),
        "complete": complete_from is None or now >= complete_from,
        "complete_from": complete_from,
        "position": str(decode_position(meta["position"])) if meta.get("position") else None,
        "stats": {_s(k): int(_s(v)) for k, v in stats.items()},
    }


def _plain(value: str, width: int):
    """Source text (titles, devices, event types) as a literal cell: never read as Rich markup
    (a device named `[/]` or `[bold]` is shown as typed), non-printable characters escaped."""
    from rich.text import Text

    value = value[:width]
    return Text(value if value.isprintable() else value.encode("unicode_escape").decode())


def render(snap: dict[str, Any], keys):
    """A rich renderable of one snapshot."""
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    fresh = snap["freshness_s"]
    head = Text(f"{keys.top}  ({snap['members']} content in the window)  ")
    head.append(f"newest counted event {fresh:.1f}s ago" if fresh is not None else "no events counted yet",
                style="green" if fresh is not None and fresh < 5 else "yellow")
    if snap["last_write_s"] is not None:
        head.append(f"  last write {snap['last_write_s']:.1f}s ago")
    if not snap["complete"]:
        head.append(f"\nboard warming up: it counts events streamed since it was created and is exact from "
                    f"{time.strftime('%H:%M:%S', time.localtime(snap['complete_from']))} "
                    f"(or rebuild it: pulse backfill --sinks redis)", style="yellow")
    top = Table(title="top content", expand=True)
    for col, just in (("#", "right"), ("title", "left"), ("type", "left"), ("seconds", "right"), ("events", "right")):
        top.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, row in enumerate(snap["top"], 1):
        top.add_row(str(i), _plain(row["title"], 60), _plain(row["content_type"], 20), f"{row['seconds']:,.3f}",
                    f"{row['events']:,}")
    per_type = []
    for ctype, rows in snap["by_type"].items():
        t = Table(title=Text(ctype))
        t.add_column("title")
        t.add_column("seconds", justify="right")
        for row in rows:
            t.add_row(_plain(row["title"], 32), f"{row['seconds']:,.1f}")
        per_type.append(t)
    dev = Table(title="devices (events)")
    dev.add_column("device")
    dev.add_column("events", justify="right")
    for name, n in snap["devices"]:
        dev.add_row(_plain(name, 40), f"{n:,}")
    et = Table(title="event types")
    et.add_column("type")
    et.add_column("events", justify="right")
    for name, n in snap["event_types"]:
        et.add_row(_plain(name, 20), f"{n:,}")
    s = snap["stats"]
    foot = Text(f"not counted: late {s.get('late', 0):,}, future-dated (held) {s.get('future', 0):,}, "
                f"uncorrectable updates/deletes {s.get('uncorrectable', 0):,}; replayed batches "
                f"{s.get('batches_replayed', 0):,}; position {snap['position'] or '-'}", style="dim")
    return Group(head, top, Columns(per_type), Columns([dev, et]), foot)


def top(
    redis_url: Optional[str] = typer.Option(None, "--redis-url", envvar="PULSE_REDIS_URL", show_default=False),
    prefix: Optional[str] = typer.Option(None, "--prefix", envvar="PULSE_REDIS_PREFIX"),
    limit: int = typer.Option(10, "--limit", "-n", min=1, max=100, help="Rows of the top table."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit (no live view)."),
    as_json: bool = typer.Option(False, "--json", help="With --once: print the snapshot as JSON."),
) -> None:
    """Show the live Redis board: top content with titles, by type, devices, freshness."""
    import orjson
    import redis
    from rich.console import Console
    from rich.live import Live

    from pulse.cli import common
    from pulse.errors import TransientError
    from pulse.sinks.redis.board import Keys

    cfg = common.settings(redis={"url": redis_url, "prefix": prefix}).redis
    keys = Keys(cfg.prefix, cfg.window_s)
    client = redis.Redis.from_url(cfg.url.get_secret_value(), socket_timeout=cfg.socket_timeout_s)

    def read():
        try:
            return snapshot(client, keys, limit)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TransientError(f"cannot read the board from {cfg.safe_url()}: {exc}",
                                 hint="check PULSE_REDIS_URL and that Redis is running") from exc

    if once:
        snap = read()
        if as_json:
            typer.echo(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode())
        else:
            Console().print(render(snap, keys))
        return
    console = Console()
    try:
        with Live(render(read(), keys), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(read(), keys))
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("top")(top)
