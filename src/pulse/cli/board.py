"""`pulse board`: serve the live web page of the board and the pipeline (docs/board.md)."""

from __future__ import annotations

import signal
import threading
from typing import Optional

import typer


def board(
    host: Optional[str] = typer.Option(None, "--host", envvar="PULSE_BOARD__HOST",
                                       help="Address to bind (default 127.0.0.1; anything else needs a token "
                                            "in PULSE_BOARD__TOKEN or PULSE_BOARD__TOKEN_FILE)."),
    port: Optional[int] = typer.Option(None, "--port", envvar="PULSE_BOARD__PORT", help="Port (0: any free one)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", envvar="PULSE_REDIS_URL", show_default=False),
    prefix: Optional[str] = typer.Option(None, "--prefix", envvar="PULSE_REDIS_PREFIX"),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL",
                                               show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    limit: int = typer.Option(10, "--limit", "-n", min=1, max=50, help="Rows of the top table."),
    no_status: bool = typer.Option(False, "--no-status",
                                   help="Show the Redis board only (no PostgreSQL connection: no slot, sinks, "
                                        "snapshot or backfill)."),
) -> None:
    """Serve a live web page: top content, per-type boards, devices, freshness, sinks, slot, backfills."""
    import redis

    from pulse.board.collect import Collector, read_series
    from pulse.board.server import BoardServer
    from pulse.cli import common
    from pulse.cli.status import read_status
    from pulse.cli.top import snapshot
    from pulse.log import get_logger
    from pulse.sinks.redis.board import Keys

    log = get_logger("pulse.board")
    cfg = common.settings(redis={"url": redis_url, "prefix": prefix},
                          database={"url": database_url, "slot": slot},
                          board={"host": host, "port": port})
    rcfg, bcfg = cfg.redis, cfg.board
    keys = Keys(rcfg.prefix, rcfg.window_s)
    client = redis.Redis.from_url(rcfg.url.get_secret_value(), socket_timeout=rcfg.socket_timeout_s)

    def read_board(now: float) -> dict:
        snap = snapshot(client, keys, limit, now)
        snap["series"] = read_series(client, keys, rcfg.bucket_s, now)
        snap["keys"] = {"top": keys.top, "prefix": keys.prefix}
        return snap

    read = None if no_status else (lambda: read_status(cfg.database))
    collector = Collector(read_board, read, bcfg.interval_s, bcfg.status_interval_s)
    token = bcfg.token.get_secret_value() if bcfg.token else None
    server = BoardServer(bcfg.host, bcfg.port, collector, token)
    collector.start()
    bound_host, bound_port = server.server_address[:2]
    url = f"http://{'[' + bound_host + ']' if ':' in str(bound_host) else bound_host}:{bound_port}/"
    log.info("board.serving", url=url, board=keys.top, status=not no_status, token=token is not None)
    typer.echo(f"pulse board: {url}" + (" (open /?token=<token> once)" if token else ""), err=True)

    def stop(_signum, _frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        collector.stop()
        server.server_close()
        log.info("board.stopped")


def register(app: typer.Typer) -> None:
    app.command("board")(board)
