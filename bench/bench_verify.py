"""`pulse verify` benchmark: verify of N equal rows beside the same aggregate by hand, and the queries to name 1 row.

In one run, on the same N events of a scratch database streamed into a fresh
BigQuery dataset (a `pulse backfill` into the emulator):

1. **by hand**: on each side a bare `count(*)`, then the checksum aggregate
   of `pulse.verify.checksum` (count, sum h1, sum h2) over the whole range,
   as one would write it by hand: the floor verify cannot beat;
2. **verify, equal**: `verify_bigquery` over the same range (one-day buckets):
   its time over the by-hand time (target <= 1.5x);
3. **verify, 1 row differs**: one row's `device` changed in BigQuery (DML
   UPDATE): the time, the queries issued, and that exactly that id is named.

Usage (services up, `source .pulse/services.env`):

    .venv/bin/python bench/bench_verify.py --events 1000000 [--emulator ephemeral]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ScratchDatabase, insert_events_sql, seed_content  # noqa: E402
from bench_backfill import backfill_to, ephemeral_emulator  # noqa: E402

from pulse.config import Settings  # noqa: E402


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--emulator", choices=("shared", "ephemeral"), default="shared")
    args = parser.parse_args()
    from pulse.log import configure_logging

    configure_logging(os.environ.get("PULSE_BENCH_LOG", "warning"))
    with contextlib.ExitStack() as stack:
        endpoint = os.environ["PULSE_BIGQUERY_ENDPOINT"]
        if args.emulator == "ephemeral":
            endpoint = stack.enter_context(ephemeral_emulator())
        print(f"emulator: {args.emulator} ({endpoint}), {args.events:,} events")
        run(args, stack.enter_context(ScratchDatabase("pulse_bench_verify")), endpoint)


def run(args, db: ScratchDatabase, endpoint: str) -> None:
    from pulse.sinks.bigquery.client import make_client
    from pulse.verify import checksum as C
    from pulse.verify.bigquery import verify_bigquery

    conn = db.connect()
    cur = conn.cursor()
    ids = seed_content(cur)
    insert_events_sql(cur, ids, args.events, 50_000)
    dataset = f"bench_verify_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database=db.config("bench_verify"), snapshot={"mode": "never"},
        bigquery={"project": os.environ["PULSE_BIGQUERY_PROJECT"], "dataset": dataset, "endpoint": endpoint,
                  "spool_dir": str(Path(".pulse") / "bench" / dataset)},
    )
    client = make_client(settings.bigquery)
    table = f"`{client.project}.{dataset}.engagement_events`"

    def bq(q: str):
        return list(client.query(q).result())

    def bq_done() -> bool:
        try:
            return bq(f"SELECT count(*) FROM {table}")[0][0] >= args.events
        except Exception:
            return False

    try:
        load_s = backfill_to(db, settings, "bigquery", args.events, bq_done, args.timeout, 100_000)
        print(f"loaded by pulse backfill in {load_s:.1f} s")
        pg_from = "FROM engagement_events e LEFT JOIN content c ON c.id = e.content_id " + C.pg_lateral()
        h1, h2 = C.pg_halves("h")
        b1, b2 = C.bq_halves("h")
        pg_count, _ = _timed(lambda: cur.execute("SELECT count(*) FROM engagement_events") or cur.fetchall())
        bq_count, _ = _timed(lambda: bq(f"SELECT count(*) FROM {table}"))
        pg_sum, a = _timed(lambda: cur.execute(f"SELECT count(*), sum({h1}), sum({h2}) FROM (SELECT md5({C.pg_text()}) AS h "
                                               f"{pg_from}) r") or cur.fetchall())
        bq_sum, b = _timed(lambda: bq(f"SELECT count(*), sum({b1}), sum({b2}) FROM (SELECT TO_HEX(MD5({C.bq_text()})) AS h "
                                      f"FROM {table} t) r"))
        assert tuple(a[0]) == tuple(b[0]), (a, b)
        by_hand = pg_count + bq_count + pg_sum + bq_sum
        print(f"by hand: count(*) {pg_count:.2f} s (PostgreSQL) + {bq_count:.2f} s (BigQuery), checksum aggregate "
              f"{pg_sum:.2f} s + {bq_sum:.2f} s = {by_hand:.2f} s")
        kw = dict(since=None, until=None, bucket_s=86_400, settle_s=0, client=client)
        t_eq, r = _timed(lambda: verify_bigquery(settings, **kw))
        assert r.ok, r.findings[:3]
        print(f"verify, equal: {t_eq:.2f} s, {r.queries} queries, {r.buckets} buckets: {t_eq / by_hand:.2f}x by hand "
              f"(target <= 1.5x)")
        victim = int(bq(f"SELECT event_id FROM {table} ORDER BY event_id LIMIT 1 OFFSET {args.events // 3}")[0][0])
        bq(f"UPDATE {table} SET device = 'bench-tampered' WHERE event_id = {victim}")
        t_one, r = _timed(lambda: verify_bigquery(settings, **kw))
        assert [(f.kind, f.key, f.columns) for f in r.findings] == [("different", str(victim), ("device",))], \
            r.findings
        bound = 2 * (1 + math.ceil(math.log(max(args.events / 256, 1), 16)) + 1)
        print(f"verify, 1 row differs: {t_one:.2f} s, {r.queries} queries to name it among {args.events:,} "
              f"(2 x (1 bucket + ceil(log16(N/256)) splits + 1 leaf) = {bound})")
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()


if __name__ == "__main__":
    main()
