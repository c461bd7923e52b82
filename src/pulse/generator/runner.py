"""One generator run: seed content, write events (live or bulk), return a summary.

`run(cfg, spec)` is what `pulse generate` calls. Randomness comes from one
`random.Random(seed)` split into independent streams (content, length-0
content, users and events, anomalies), so that:

- the same seed gives the same content and, in bulk mode with fixed
  `--since/--until`, the same events row for row (live mode stamps events
  with the wall clock, so only their shapes repeat);
- turning anomalies on changes only the events the injector declares.

Without `--seed` a seed is drawn from the OS and reported, so any run can be
repeated.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pulse.config import DatabaseConfig
from pulse.errors import ConfigError, TerminalError, TransientError
from pulse.generator.anomalies import ROW_KINDS, AnomalyInjector
from pulse.generator.content import ensure_content
from pulse.generator.events import EVENT_TYPES, EventFactory
from pulse.generator.writer import WriteStats, write_bulk, write_live
from pulse.log import get_logger

log = get_logger(__name__)

DEFAULT_HISTORY = timedelta(days=7)


@dataclass(frozen=True)
class GenerateSpec:
    """What to generate. `mode` "bulk" needs `count`; "live" uses `rate` and `duration_s`."""

    mode: Literal["live", "bulk"] = "live"
    count: int = 0
    since: datetime | None = None
    until: datetime | None = None
    rate: float = 20.0
    duration_s: float = 0.0
    seed: int | None = None
    anomalies: float = 0.0
    content_count: int = 200
    users: int = 5_000
    chunk_rows: int = 50_000
    txn_rows: int = 50

    def validate(self) -> None:
        if self.mode not in ("live", "bulk"):
            raise ConfigError(f"unknown mode {self.mode!r}", hint="use live or bulk")
        if not 0.0 <= self.anomalies <= 1.0:
            raise ConfigError("--anomalies must be a fraction in [0, 1]", hint="e.g. --anomalies 0.05")
        if self.content_count < 1 or self.users < 1 or self.chunk_rows < 1 or self.txn_rows < 1:
            raise ConfigError("--content, --users, --chunk-rows and --txn-rows must be >= 1", hint="pass positive counts")
        if self.mode == "bulk":
            if self.count < 0:
                raise ConfigError("--count must be >= 0", hint="pass the number of events to write")
            since, until = self.window()
            if until <= since:
                raise ConfigError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})",
                                  hint="swap or widen the range")
        elif self.rate <= 0 or self.duration_s < 0:
            raise ConfigError("--rate must be > 0 and --duration >= 0", hint="e.g. --rate 200 --duration 60")

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The bulk range [since, until) in UTC; until defaults to now, since to until - 7 days."""
        now = now or datetime.now(timezone.utc)
        until = _utc(self.until) if self.until is not None else now
        since = _utc(self.since) if self.since is not None else until - DEFAULT_HISTORY
        return since, until


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _ms(value: datetime, *, ceil: bool = False) -> int:
    """Milliseconds since the epoch, exact (floored, or ceiled for a range start)."""
    delta = _utc(value) - _EPOCH
    return -(-delta // _MS) if ceil else delta // _MS


@dataclass
class Summary:
    """The outcome of a run (also printed by `pulse generate`)."""

    mode: str
    seed: int
    rows_written: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, int] = field(default_factory=dict)
    updated: int = 0
    deleted: int = 0
    content_seeded: int = 0
    content_total: int = 0
    elapsed_s: float = 0.0
    since: str | None = None
    until: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "rows_written": self.rows_written,
            "by_type": dict(self.by_type),
            "anomalies": dict(self.anomalies),
            "updated": self.updated,
            "deleted": self.deleted,
            "content_seeded": self.content_seeded,
            "content_total": self.content_total,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "since": self.since,
            "until": self.until,
        }


@dataclass
class Streams:
    """The independent random streams of one seed."""

    content: random.Random
    zero_length: random.Random
    events: random.Random
    anomalies: random.Random

    @classmethod
    def from_seed(cls, seed: int) -> Streams:
        root = random.Random(seed)
        return cls(*(random.Random(root.getrandbits(64)) for _ in range(4)))


def _check_tables(conn, schema: str) -> None:
    from pulse.schema import source_tables_exist

    with conn, conn.cursor() as cur:
        present = source_tables_exist(cur, schema)
    missing = [t for t, ok in present.items() if not ok]
    if missing:
        raise TerminalError(
            f"source table(s) {', '.join(missing)} missing in schema {schema}",
            hint="run `pulse db init` (or set PULSE_DATABASE__SOURCE_SCHEMA to the schema that holds them)",
        )


def run(cfg: DatabaseConfig, spec: GenerateSpec, *, stop: threading.Event | None = None) -> Summary:
    """Seed content if empty, then write events as `spec` says; returns the summary."""
    import psycopg2

    from pulse.source.db import connect

    spec.validate()
    seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(2**32)
    streams = Streams.from_seed(seed)
    schema = cfg.source_schema
    summary = Summary(mode=spec.mode, seed=seed)
    try:
        conn = connect(cfg)
    except psycopg2.OperationalError as exc:
        raise TerminalError(
            f"cannot connect to {cfg.safe_url()}: {str(exc).strip()}",
            hint="check PULSE_DATABASE_URL / --database-url and that PostgreSQL is running",
        ) from exc
    try:
        _check_tables(conn, schema)
        if spec.mode == "bulk":
            since, until = spec.window()
            anchor = since
            summary.since, summary.until = since.isoformat(), until.isoformat()
        else:
            anchor = datetime.now(timezone.utc)
        catalogue, seeded = ensure_content(
            conn,
            schema,
            count=spec.content_count,
            rng=streams.content,
            zero_length_rng=streams.zero_length if spec.anomalies > 0 else None,
            published_before=anchor,
        )
        summary.content_seeded, summary.content_total = seeded, len(catalogue)
        if not any(c.length_seconds != 0 for c in catalogue):
            raise TerminalError(
                f"{schema}.content has no playable rows (all have length_seconds 0)",
                hint="add content, or empty the table so `pulse generate` seeds it",
            )
        factory = EventFactory(catalogue, streams.events, users=spec.users)
        injector = None
        if spec.anomalies > 0:
            injector = AnomalyInjector(
                streams.anomalies,
                spec.anomalies,
                lengths={c.id: c.length_seconds for c in catalogue},
                zero_length_ids=[c.id for c in catalogue if c.length_seconds == 0],
            )
        log.info("generator.start", mode=spec.mode, seed=seed, database=cfg.safe_url(), schema=schema,
                 content=len(catalogue), content_seeded=seeded, anomalies=spec.anomalies,
                 **({"count": spec.count, "since": summary.since, "until": summary.until} if spec.mode == "bulk"
                    else {"rate": spec.rate, "duration_s": spec.duration_s}))
        if spec.mode == "bulk":
            stats = _bulk(conn, schema, spec, factory, injector, since, until)
        else:
            stats = write_live(
                conn, schema, factory.live(lambda: int(time.time() * 1000), transform=injector),
                rate=spec.rate, duration_s=spec.duration_s, txn_rows=spec.txn_rows,
                injector=injector, stop=stop,
            )
    except psycopg2.OperationalError as exc:
        raise TransientError(
            f"lost the database while generating: {str(exc).strip()}",
            hint="committed chunks / transactions stay written; rerun when PostgreSQL is back",
        ) from exc
    except psycopg2.Error as exc:
        raise TerminalError(
            f"database error while generating: {str(exc).strip()}",
            hint="see the PostgreSQL log; committed chunks / transactions stay written, rerun to add more",
        ) from exc
    finally:
        conn.close()
    summary.rows_written = stats.rows
    summary.by_type = {t: stats.by_type.get(t, 0) for t in EVENT_TYPES}
    summary.updated, summary.deleted = stats.updated, stats.deleted
    summary.elapsed_s = stats.elapsed_s
    if injector is not None:
        summary.anomalies = {k: injector.counts.get(k, 0) for k in (*ROW_KINDS, "update", "delete")}
    log.info("generator.done", mode=spec.mode, rows=summary.rows_written, elapsed_s=round(summary.elapsed_s, 3),
             rows_per_s=round(summary.rows_per_s), anomalies=sum(summary.anomalies.values()),
             updated=summary.updated, deleted=summary.deleted)
    return summary


def _bulk(conn, schema: str, spec: GenerateSpec, factory: EventFactory,
          injector: AnomalyInjector | None, since: datetime, until: datetime) -> WriteStats:
    if spec.count == 0:
        return WriteStats()
    chunks = factory.history(spec.count, _ms(since, ceil=True), _ms(until), chunk_rows=spec.chunk_rows, transform=injector)
    last_log = [time.monotonic()]

    def progress(stats: WriteStats) -> None:
        now = time.monotonic()
        if now - last_log[0] >= 5.0:
            last_log[0] = now
            log.info("generator.bulk.progress", rows=stats.rows, of=spec.count)

    return write_bulk(conn, schema, chunks, injector=injector, on_chunk=progress)


__all__ = ["GenerateSpec", "Streams", "Summary", "run"]
