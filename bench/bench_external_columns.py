"""Benchmark: the external sink's encoding of one chunk, per event against from the columns.

No services: one chunk of `--rows` generator events (sessions, popularity,
plain rows: the common case) as `EventChunk`, then, best of `--repeat`:

1. per event: `encode_event` for each of `chunk.events()` and `build_frame`
   (what `ExternalSink.write` does with a batch);
2. columns: `encode_table(chunk.table())` and `build_frame_columns` (what
   `ExternalSink.write_columns` does with a live run or backfill chunk).

Building the events and the table is not timed (the runtime builds them once
for every sink). Both frames are checked equal before anything is printed.

    .venv/bin/python bench/bench_external_columns.py [--rows 10000] [--repeat 5] [--lanes 8]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timezone

import orjson
import pyarrow as pa

from pulse.generator.content import ContentItem
from pulse.generator.events import EventFactory
from pulse.sinks.external.sink import encode_event
from pulse.sinks.external.columns import encode_table, fallback_mask
from pulse.sinks.external.local import build_frame, build_frame_columns
from pulse.model_arrow import RAW_SCHEMA
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache, ContentInfo

NOW = datetime(2024, 8, 2, 12, 0, 0, 123456, tzinfo=timezone.utc)


def _jsonb(doc: dict) -> str:
    """PostgreSQL's jsonb text of a flat object: keys by (length, bytes), `", "` and `": "`."""
    keys = sorted(doc, key=lambda k: (len(k.encode()), k.encode()))
    return "{" + ", ".join(orjson.dumps(k).decode() + ": " + orjson.dumps(doc[k]).decode() for k in keys) + "}"


def chunk(rows: int, seed: int) -> EventChunk:
    rng = random.Random(seed)
    items = [ContentItem(id="%032x" % rng.getrandbits(128), slug=f"slug-{i}", title=f"Title {i}",
                         content_type=rng.choice(["podcast", "video", "newsletter"]),
                         length_seconds=rng.choice([60, 600, 3600]), publish_ts=NOW) for i in range(200)]
    cache = ContentCache({c.id: ContentInfo(c.slug, c.title, c.content_type, c.length_seconds) for c in items})
    events = next(EventFactory(items, rng, users=5000).history(rows, 1_700_000_000_000, 1_700_003_600_000,
                                                                chunk_rows=rows))
    raw = pa.Table.from_pylist([
        {"id": i + 1, "content_id": e.content_id, "user_id": e.user_id, "event_type": e.event_type,
         "event_us": e.event_ts_ms * 1000 + rng.randrange(1000), "event_ts_bad": False,
         "duration_ms": e.duration_ms, "device": e.device, "raw_payload": _jsonb(e.raw_payload)}
        for i, e in enumerate(events)], schema=RAW_SCHEMA)
    return EventChunk(raw, lsn=0x16B3748, first_seq=1, commit_ts=NOW, now=NOW, cache=cache, backfill=False)


def best(fn, repeat: int) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    c = chunk(args.rows, args.seed)
    events, table = c.events(), c.table()
    source = "pulse/bench"
    per_event, a = best(lambda: build_frame([encode_event(e, source) for e in events], c.position, 1.0, args.lanes),
                        args.repeat)
    columns, b = best(lambda: build_frame_columns(encode_table(table, source), c.position, 1.0, args.lanes),
                      args.repeat)
    assert a == b, "the frames differ"
    n = len(events)
    print(f"{n} events, {int(fallback_mask(table).sum())} through the per-event fallback, best of {args.repeat}:")
    print(f"  per event (encode_event + build_frame):          {1e6 * per_event / n:7.2f} us/event "
          f"({n / per_event:,.0f} events/s)")
    print(f"  columns   (encode_table + build_frame_columns):  {1e6 * columns / n:7.2f} us/event "
          f"({n / columns:,.0f} events/s)  {per_event / columns:.1f}x")


if __name__ == "__main__":
    main()
