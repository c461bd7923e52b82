"""The Redis sink: the real-time board, exact and fresh.

What it writes (docs/sinks/redis.md has every key, its type, TTL and a
`redis-cli` example): `pulse:top:10m` (content id -> engagement seconds over
the last 10 minutes of event time), the same per content type, event counts
per content, device and event type, content metadata for display, and its
own meta (position, epoch, freshness) and stats (late, future, ...).

How (see `redis.board` and `redis.lua`):

- each batch is pre-aggregated into per-bucket cells (10 s buckets of
  `event_ts`): events one by one, a live run of inserts that arrives as
  columns (`write_columns`) by a group-by on its columns; buffered batches are flushed after `flush_interval_ms`
  (<= 200 ms) or `max_pending_events`, and whenever the worker is idle;
- one EVALSHA per flush applies the cells, expires buckets that left the
  window and stores the sink's position, atomically: a replay after a crash
  (a batch at or below the stored position) changes nothing;
- the board is maintained, never computed on read; the expiry step runs on
  every flush, driven by the sink's (injectable) clock;
- Redis unreachable -> `TransientError` (the runtime retries the same batch
  with backoff and the sink catches up from its position); Redis that lost
  the board while the sink ran (epoch gone or position regressed) ->
  `TerminalError` with the way to rebuild, never a silently half-counted board;
- a rebuild (`pulse backfill --sinks redis`) pauses the board: the flush
  answers PAUSED, the sink keeps its pending events (bounded by
  `max_pending_events`, then `TransientError`: the runtime holds the stream)
  and retries; after the swap it skips what the snapshot holds and applies
  the rest (`rebuild`, `pause`, and docs/sinks/redis.md "Rebuilding").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Union

import pyarrow.compute as pc
from prometheus_client import Counter

from pulse.config import DatabaseConfig, RedisConfig, Settings
from pulse.errors import ConfigError, TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, EnrichedEvent, Position
from pulse.model_arrow import rows_after
from pulse.sinks.base import Sink, SinkInstance
from pulse.sinks.redis.board import Aggregate, Keys, PauseState, decode_position, encode_position
from pulse.sinks.redis.lua import APPLY, OPEN, PAUSE, RESET

if TYPE_CHECKING:
    import pyarrow as pa

log = get_logger(__name__)

#: What the pending aggregate was made of, in order: events, or tables of inserts (`write_columns`).
Part = Union["tuple[EnrichedEvent, ...]", "pa.Table"]

Clock = Callable[[], datetime]

#: Events the board did not count, by reason (late, future, uncorrectable), and replayed batches.
BOARD_SKIPPED = Counter("pulse_redis_skipped_events_total", "Events the Redis board did not count", ["reason"])
#: Future-dated events held until the clock reaches their bucket (counted then).
BOARD_HELD = Counter("pulse_redis_future_events_total",
                     "Events dated beyond future_skew_s, held by the Redis board until their time comes")
BOARD_REPLAYS = Counter("pulse_redis_replayed_batches_total", "Batches Redis already had (replays after a crash)")

PAUSE_HINT = (
    "run the rebuild again; if it was slow rather than killed (a long snapshot read, a slot creation waiting "
    "on a long transaction), raise PULSE_REDIS__REBUILD_PAUSE_TIMEOUT_S"
)

REBUILD_HINT = (
    "Redis lost Pulse's board (FLUSHALL / FLUSHDB, eviction, or a restart without persistence): restart "
    "`pulse run`; the board then counts from that moment and is exact again after one window "
    "(meta field complete_from_ms), or rebuild the window from the source table with "
    "`pulse backfill --sinks redis --since <now - window>`. Run Redis with appendonly yes and "
    "maxmemory-policy noeviction to prevent it"
)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RedisSink(Sink):
    """Maintains the board under `config.prefix`; one atomic script per flush."""

    name = "redis"

    #: The board keeps a window: an initial snapshot rebuilds it, never replays history into it.
    snapshot_mode = "window"
    #: Live runs of inserts arrive as `enrich_table`'s columns and are aggregated from them (`Aggregate.add_table`).
    accepts_columns = True
    #: An UPDATE or DELETE corrects the board only with its old values (`board.py`).
    needs_old_values = True

    def __init__(self, config: RedisConfig, *, clock: Clock = _utcnow, client: Any = None,
                 name: "str | SinkInstance" = "redis") -> None:
        if config.window_s % config.bucket_s:
            raise ConfigError(f"redis.bucket_s ({config.bucket_s}) must divide redis.window_s ({config.window_s})",
                              hint="e.g. window_s 600 with bucket_s 5, 10, 15, 20, 30 or 60")
        if config.state_ttl_s <= config.window_s + config.bucket_s:
            raise ConfigError("redis.state_ttl_s must exceed window_s + bucket_s",
                              hint="raise PULSE_REDIS__STATE_TTL_S (default 3600)")
        self.config = config
        self.identify(name)
        self.keys = Keys(config.prefix, config.window_s)
        self.clock = clock
        self._client = client
        self._apply = None
        self.epoch = ""
        self.position = ZERO  # stored in Redis, as far as this process knows
        self._pending: Aggregate = self._new_aggregate()
        # The events (or tables) behind the pending aggregate, kept until it is
        # flushed so it can be re-aggregated past a rebuild's position (bounded
        # by max_pending_events).
        self._pending_parts: list[Part] = []
        self._pending_since = 0.0
        # A rebuild's pause, as this sink saw it (PAUSED answers).
        self._pause = PauseState(max(0.1, config.flush_interval_ms / 1000))
        # Since this process started: what the board did not count, for `pulse status`.
        self.counters = {"late": 0, "future": 0, "uncorrectable": 0, "corrections": 0, "replayed_batches": 0}
        self._written_content: dict[str, tuple] = {}
        self.last_result: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, name: "str | SinkInstance" = "redis") -> "RedisSink":
        return cls(settings.redis, name=name)

    def rebuild_window(self, database: DatabaseConfig) -> dict[str, object]:
        """Rebuild this board's window from the source (`runtime/rebuild.py`), exact while live writers run."""
        from pulse.runtime.rebuild import rebuild_board

        return rebuild_board(self.config, database, self.clock)

    # -- connection ------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            try:
                import redis
            except ModuleNotFoundError as exc:  # pragma: no cover - redis is a dependency
                raise ConfigError("the redis sink needs the redis package", hint="pip install 'pulse-cdc[redis]'") \
                    from exc
            self._client = redis.Redis.from_url(
                self.config.url.get_secret_value(),
                socket_timeout=self.config.socket_timeout_s,
                socket_connect_timeout=self.config.socket_timeout_s,
                health_check_interval=30,
            )
        return self._client

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a Redis call, sorting redis-py's exceptions into Pulse's error kinds."""
        import redis

        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Includes BusyLoadingError (a restarting Redis loading its AOF).
            raise TransientError(f"redis unreachable during {what} ({self.config.safe_url()}): {exc}") from exc
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith(("OOM", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")):
                raise TransientError(f"redis refused {what}: {text}") from exc
            if text.startswith(("MOVED", "ASK", "CROSSSLOT")):
                raise TerminalError(f"redis cluster refused {what}: {text}",
                                    hint="put a hash tag in PULSE_REDIS_PREFIX (e.g. '{pulse}:') and connect "
                                         "to the node owning that slot") from exc
            raise TerminalError(f"redis error during {what}: {text}", hint="see the Redis log") from exc

    # -- contract ----------------------------------------------------------------

    @property
    def position_field(self) -> str:
        """The meta field holding this instance's position: one per Kafka partition when consumed from Kafka."""
        return f"position:{self.name}" if self.instance.partitioned else "position"

    def open(self) -> Position:
        self._check_server()
        self._apply = self.client.register_script(APPLY)
        opener = self.client.register_script(OPEN)
        cfg = self.config
        now_ms = int(self.clock().timestamp() * 1000)
        state, epoch, pos = self._call(lambda: opener(
            keys=[self.keys.meta, self.keys.stats],
            args=[cfg.prefix, self.keys.label, uuid.uuid4().hex, now_ms, cfg.window_s * 1000, cfg.bucket_s * 1000,
                  cfg.meta_ttl_s * 1000, self.position_field]), "open")
        self.epoch = epoch.decode()
        self.position = decode_position(pos)
        if state == b"CREATED":
            log.warning("redis.board.created", prefix=cfg.prefix, epoch=self.epoch,
                        complete_from=datetime.fromtimestamp((now_ms / 1000) + cfg.window_s + cfg.bucket_s,
                                                             timezone.utc).isoformat(),
                        note="no board under this prefix: it counts from now. On a first start this is "
                             "expected; otherwise Redis lost its data (rebuild: pulse backfill --sinks redis)")
        else:
            log.info("redis.board.resumed", prefix=cfg.prefix, epoch=self.epoch, position=str(self.position))
        return self.position

    # -- the rebuild's side: pause, swap -----------------------------------------

    def _pause_call(self, mode: str, token: str, timeout_s: float = 0.0) -> tuple[str, str, int, int]:
        script = self.client.register_script(PAUSE)
        state, holder, until_ms, now_ms = self._call(lambda: script(
            keys=[self.keys.meta], args=[mode, token, int(timeout_s * 1000), self.config.meta_ttl_s * 1000]),
            f"rebuild pause ({mode})")
        return state.decode(), holder.decode() if isinstance(holder, bytes) else str(holder), int(until_ms), \
            int(now_ms)

    def pause(self, token: str, timeout_s: float) -> int:
        """Freeze the board for the rebuild holding `token`; returns the deadline (Redis' clock, ms).

        From now on every live APPLY answers PAUSED and changes nothing, so
        every stored position is final until `rebuild` swaps the window in
        (which lifts the pause), `release_pause`, or the deadline (a rebuild
        killed mid-way). TerminalError when another rebuild holds the board.
        """
        state, holder, until_ms, now_ms = self._pause_call("take", token, timeout_s)
        if state == "BUSY":
            raise TerminalError(
                f"another rebuild of the board under {self.config.prefix!r} is running (pause {holder[:8]}, "
                f"{(until_ms - now_ms) / 1000:.0f}s left)",
                hint="wait for it to finish; if it was killed, its pause expires by itself "
                     "(redis.rebuild_pause_timeout_s) and the rebuild can be run again")
        return until_ms

    def renew_pause(self, token: str, timeout_s: float) -> int:
        """Push the deadline of this rebuild's pause out again; TerminalError when it was lost meanwhile."""
        state, holder, until_ms, now_ms = self._pause_call("renew", token, timeout_s)
        if state == "EXPIRED":
            raise TerminalError(self._expired_message(token, holder, until_ms, now_ms), hint=PAUSE_HINT)
        return until_ms

    def release_pause(self, token: str) -> bool:
        """Lift this rebuild's pause (after a failure); never another rebuild's. True when it was held."""
        return self._pause_call("release", token)[0] == "RELEASED"

    def _expired_message(self, token: str, holder: str, until_ms: int, now_ms: int) -> str:
        if holder == token:
            why = f"it expired {(now_ms - until_ms) / 1000:.1f}s ago"
        elif holder:
            why = f"another rebuild ({holder[:8]}) took the board over"
        else:
            why = "it was lifted"
        return (f"the rebuild's pause of the board under {self.config.prefix!r} was lost before the swap ({why}); "
                "live sinks may have written past the snapshot, so nothing was changed")

    def rebuild(self, events: Iterable[EnrichedEvent], position: Position, *, token: str) -> int:
        """Replace the window with `events` (the source at a consistent point) and store `position`.

        The board must be paused by `token` (`pause`). One MULTI/EXEC: the
        reset of the window's keys, `position` in every instance's position
        field (and as the floor of instances without one yet), the end of
        the pause, and the snapshot's increments land together, so a reader
        never sees a half-built board. Live batches at or below `position`
        are then skipped as replays, the live stream continues after it.
        TerminalError (nothing changed) when the pause was lost before the
        swap. Returns the events folded in.
        """
        self._check_server()
        cfg = self.config
        self._apply = self.client.register_script(APPLY)
        reset = self.client.register_script(RESET)
        agg = self._new_aggregate()
        now_ms = int(self.clock().timestamp() * 1000)
        agg.add_events(events, now_ms / 1000)
        agg.last = position
        pos = encode_position(position)
        meta = self._metadata_commands(agg)

        def run():
            pipe = self.client.pipeline(transaction=True)
            reset(keys=[self.keys.meta, self.keys.stats],
                  args=[cfg.prefix, self.keys.label, uuid.uuid4().hex, now_ms, cfg.window_s * 1000,
                        cfg.bucket_s * 1000, cfg.meta_ttl_s * 1000, self.position_field, pos, token], client=pipe)
            for _cid, key, mapping, _value in meta:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, cfg.content_ttl_s)
            args: list[object] = [
                cfg.prefix, self.keys.label, pos, "", "", now_ms, cfg.window_s * 1000, cfg.bucket_s * 1000,
                cfg.state_ttl_s * 1000, cfg.meta_ttl_s * 1000, agg.newest_event_ms, agg.newest_commit_ms,
                agg.events, cfg.future_skew_s * 1000, agg.uncorrectable, agg.corrections, agg.null_content,
                *agg.script_args(),
                "", token, self.position_field,
            ]
            self._apply(keys=[self.keys.meta, self.keys.stats], args=args, client=pipe)
            return pipe.execute()

        results = self._call(run, "rebuild")
        state = results[0][0]
        if state == b"EXPIRED":
            _state, holder, until_ms, redis_now_ms = results[0]
            raise TerminalError(self._expired_message(token, holder.decode(), int(until_ms), int(redis_now_ms)),
                                hint=PAUSE_HINT)
        self.epoch = results[0][1].decode()
        self.position = position
        log.info("redis.board.rebuilt", prefix=cfg.prefix, events=agg.events, position=str(position))
        return agg.events

    def status(self) -> dict[str, object]:
        return {"not counted": {k: v for k, v in self.counters.items() if k in ("late", "future", "uncorrectable")},
                "corrections": self.counters["corrections"], "replayed batches": self.counters["replayed_batches"],
                "rebuild pauses": self._pause.pauses, "paused": self._pause.active}

    def _check_server(self) -> None:
        info = self._call(lambda: self.client.info("cluster"), "open")
        if info.get("cluster_enabled") and self.keys.hash_tag() is None:
            raise ConfigError(
                f"Redis Cluster needs every key of the board in one slot; prefix {self.config.prefix!r} has no hash tag",
                hint="set PULSE_REDIS_PREFIX='{pulse}:' (keys become {pulse}:top:10m, ...)",
            )
        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy")
        except Exception:  # managed Redis often disables CONFIG: nothing to check then
            policy = None
        if policy and policy != "noeviction":
            log.warning("redis.eviction_policy", policy=policy,
                        note="every board key has a TTL, so volatile-* and allkeys-* policies may evict parts of "
                             "the board and break its exactness; use maxmemory-policy noeviction")

    def write(self, batch: Batch) -> Position:
        pending = self._pending
        # Backfilled events are never folded in: the live stream already counted
        # them, and the window is repaired by `rebuild` (a snapshot), not replayed.
        events = batch.events
        if batch.backfill or any(e.backfill for e in events):
            events = tuple(e for e in events if not e.backfill)
            if not events:
                return batch.last  # nothing to store: the skipped events need no durability
        # The runtime retries the same batch after a transient failure: what is
        # already buffered or stored is not folded in twice.
        upto = max(self.position, pending.last or ZERO)
        if events and events[-1].position > upto:
            if events[0].position <= upto:
                events = tuple(e for e in events if e.position > upto)
            if not pending.events:
                self._pending_since = time.monotonic()
            pending.add_events(events, self.clock().timestamp())
            self._pending_parts.append(tuple(events))
        return self._flush_if_due()

    def write_columns(self, table: "pa.Table", first: Position, last: Position) -> Position:
        """A run of inserts as `enrich_table`'s columns: `write`'s contract, aggregated from the columns."""
        pending = self._pending
        if table.num_rows:
            backfill = pc.fill_null(table.column("backfill"), False)
            if pc.any(backfill).as_py():  # never folded in, as in `write`
                table = table.filter(pc.invert(backfill))
                if not table.num_rows:
                    return last
        upto = max(self.position, pending.last or ZERO)
        if table.num_rows and last > upto:
            if first <= upto:
                table = rows_after(table, upto)
            if not pending.events:
                self._pending_since = time.monotonic()
            pending.add_table(table, self.clock().timestamp())
            self._pending_parts.append(table)
        return self._flush_if_due()

    def _flush_if_due(self) -> Position:
        pending = self._pending
        due = (time.monotonic() - self._pending_since) * 1000 >= self.config.flush_interval_ms
        full = pending.events >= self.config.max_pending_events
        if pending.events and (due or full):
            self._flush(force=full)
        if self._pause.active and self._pending.events >= self.config.max_pending_events:
            # Memory stays bounded: the runtime retries this batch with backoff
            # (it is already buffered), so its queue fills and holds the stream.
            raise TransientError(
                f"the Redis board under {self.config.prefix!r} is paused by a rebuild and "
                f"{self._pending.events} events wait in memory (redis.max_pending_events)")
        return self.position

    def flush(self) -> Position | None:
        """Write what is buffered; when idle, run the expiry step alone (the window moves with the clock)."""
        self._flush()
        return self.position

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- the atomic step ---------------------------------------------------------

    def _flush(self, force: bool = False) -> None:
        if not (force or self._pause.may_try(time.monotonic())):
            return  # paused by a rebuild: retried at most every retry interval
        agg = self._pending
        cfg = self.config
        now_ms = int(self.clock().timestamp() * 1000)
        pos = encode_position(agg.last) if agg.last is not None else ""
        args: list[object] = [
            cfg.prefix, self.keys.label, pos, encode_position(self.position) if self.position > ZERO else "",
            self.epoch, now_ms, cfg.window_s * 1000, cfg.bucket_s * 1000, cfg.state_ttl_s * 1000,
            cfg.meta_ttl_s * 1000, agg.newest_event_ms, agg.newest_commit_ms, agg.events, cfg.future_skew_s * 1000,
            agg.uncorrectable, agg.corrections, agg.null_content, *agg.script_args(),
            encode_position(_first_position(self._pending_parts[0])) if self._pending_parts else "", "",
            self.position_field,
        ]
        meta = self._metadata_commands(agg)
        apply = self._apply
        assert apply is not None, "open() first"

        def run():
            if meta:
                pipe = self.client.pipeline(transaction=False)
                for _cid, key, mapping, _value in meta:
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, cfg.content_ttl_s)
                apply(keys=[self.keys.meta, self.keys.stats], args=args, client=pipe)
                return pipe.execute()[-1]
            return apply(keys=[self.keys.meta, self.keys.stats], args=args)

        result = self._call(run, "write")
        state = result[0]
        if state == b"PAUSED":
            until_ms = int(result[1])
            if self._pause.paused(until_ms, time.monotonic()):
                log.warning("redis.board.paused", prefix=cfg.prefix, sink=self.name, position=str(self.position),
                            pending=agg.events,
                            until=datetime.fromtimestamp(until_ms / 1000, timezone.utc).isoformat(),
                            note="a rebuild (pulse backfill --sinks redis) holds the board: writes wait in "
                                 "memory and resume after its swap, or when its pause expires (`until`, pushed "
                                 "out while the rebuild reads; a killed rebuild no longer renews it)")
            return
        waited = self._pause.resumed(time.monotonic())
        if waited is not None:
            log.info("redis.board.resumed_after_pause", prefix=cfg.prefix, sink=self.name, waited_s=round(waited, 3),
                     answer=state.decode())
        if state == b"REBUILT":
            # The board was lost and a rebuild built it again (at a position at
            # or after anything this sink stored): adopt its epoch and retry;
            # the fence, DUP and SPLIT then work on the rebuilt board.
            new_epoch = result[1].decode()
            log.warning("redis.board.adopted", prefix=cfg.prefix, sink=self.name, old_epoch=self.epoch,
                        epoch=new_epoch, note="the board was rebuilt by pulse backfill --sinks redis")
            self.epoch = new_epoch
            self._flush(force=True)
            return
        if state == b"LOST":
            raise TerminalError(f"the board under {cfg.prefix!r} disappeared while the sink ran (epoch "
                                f"{self.epoch} gone)", hint=REBUILD_HINT)
        if state == b"REGRESSED":
            raise TerminalError(
                f"Redis went back in time: its stored position {decode_position(result[1])} is below "
                f"{self.position}, which it had acknowledged (lost writes, e.g. a crash between AOF fsyncs)",
                hint=REBUILD_HINT)
        if state == b"SPLIT":
            stored = decode_position(result[1])
            keep = [p for p in (_part_after(part, stored) for part in self._pending_parts) if len(p)]
            kept = sum(len(p) for p in keep)
            log.info("redis.board.split", stored=str(stored), kept=kept,
                     dropped=sum(len(p) for p in self._pending_parts) - kept)
            self.position = max(self.position, stored)
            self._pending = self._new_aggregate()
            self._pending_parts = []
            if keep:
                now_s = self.clock().timestamp()
                for part in keep:
                    if isinstance(part, tuple):
                        self._pending.add_events(part, now_s)
                    else:
                        self._pending.add_table(part, now_s)
                self._pending_parts = keep
                self._flush(force=True)
            return
        if state == b"DUP":
            BOARD_REPLAYS.inc()
            self.counters["replayed_batches"] += 1
        else:
            late, refused, held = int(result[2]), int(result[3]), int(result[4])
            self.last_result = {"late": late, "refused": refused, "held": held}
            c = self.counters
            c["late"] += late
            c["future"] += held
            c["uncorrectable"] += agg.uncorrectable + refused
            c["corrections"] += agg.corrections
            for reason, n in (("late", late), ("uncorrectable", agg.uncorrectable + refused)):
                if n:
                    BOARD_SKIPPED.labels(reason).inc(n)
            if held > 0:  # net of corrections: a delete of a held event makes it negative
                BOARD_HELD.inc(held)
            written_at = time.monotonic()
            for cid, _key, _mapping, value in meta:
                self._written_content[cid] = (value, written_at)
        if agg.last is not None:
            self.position = max(self.position, agg.last)
        self._pending = self._new_aggregate()
        self._pending_parts = []

    def _metadata_commands(self, agg: Aggregate) -> list[tuple[str, str, dict, tuple]]:
        """HSETs for content whose display metadata Redis does not have yet (or had long ago)."""
        out = []
        now = time.monotonic()
        refresh_after = self.config.content_ttl_s / 4
        for cid, value in agg.metadata.items():
            seen = self._written_content.get(cid)
            if seen is not None and seen[0] == value and now - seen[1] < refresh_after:
                continue
            title, slug, ctype, length = value
            mapping = {"title": title or "", "slug": slug or "", "content_type": ctype or "",
                       "length_seconds": "" if length is None else length}
            out.append((cid, self.keys.content(cid), mapping, value))
        return out

    def _new_aggregate(self) -> Aggregate:
        return Aggregate(self.config.bucket_s, self.config.future_skew_s)



def _part_after(part: Part, pos: Position) -> Part:
    if isinstance(part, tuple):
        return tuple(e for e in part if e.position > pos)
    return rows_after(part, pos)


def _first_position(part: Part) -> Position:
    if isinstance(part, tuple):
        return part[0].position
    return Position(part.column("source_lsn")[0].as_py(), part.column("source_seq")[0].as_py())
