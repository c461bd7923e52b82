"""Verify the BigQuery table against the source, by bisection of checksums computed where the data lives.

1. Both sides reduce their rows of the range to (count, sum h1, sum h2, min id,
   max id) per time bucket of `event_ts` (`checksum` defines the row hash):
   one query each.
2. A bucket whose triple differs is split by `event_id` into `fanout` ranges
   (one query each side), and again, until a range holds at most `leaf_rows`
   rows on either side; those rows' canonical fields are fetched from both
   sides and compared in Python: ids only in the source are `missing`, only in
   BigQuery `extra`, in both with other values `different` (naming the
   columns), twice in BigQuery `duplicate`. An id missing in one bucket and
   extra in another is one `different` row (its `event_ts` changed).
   Naming one differing row among N takes about 2 * log_fanout(N / leaf_rows)
   queries.
3. Changes in flight are not findings: when step 2 found something and the
   replication slot is being consumed, verify takes the source's current WAL
   position L, waits (at most `settle_s`) until the slot's confirmed
   position reaches L (the slot is acknowledged only up to what every sink,
   BigQuery included, holds durably), then fetches the differing rows again
   from both sides, once a second until they agree or `settle_s` is over
   (durable in the spool is loaded into the table a moment later). What
   agrees by then is counted as `settled`, not reported. With no consumer on
   the slot nothing is in flight: the findings stand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from psycopg2 import sql

from pulse.config import Settings
from pulse.errors import TerminalError
from pulse.verify import checksum as C
from pulse.verify.report import DIFFERENT, DUPLICATE, EXTRA, MISSING, Finding, Result


@dataclass(frozen=True)
class Agg:
    count: int
    s1: int
    s2: int
    lo: int
    hi: int

    @property
    def sums(self) -> tuple[int, int, int]:
        return (self.count, self.s1, self.s2)


@dataclass(frozen=True)
class Scope:
    """A bucket (None: every bucket) and an inclusive id range (None: any)."""

    bucket: int | None = None
    lo: int | None = None
    hi: int | None = None


Rows = dict[int, list[tuple[str | None, ...]]]


class SourceSide:
    """engagement_events LEFT JOIN content, in PostgreSQL."""

    def __init__(self, conn, schema: str, since: datetime | None, until: datetime | None, bucket_us: int) -> None:
        self.conn = conn
        self.schema = schema
        self.since, self.until = since, until
        self.bucket_us = bucket_us
        self.queries = 0
        texts = C.pg_text()
        # The checksum SQL holds braces (JSON regexes): composed, never passed through format().
        self._from = sql.SQL("FROM {}.engagement_events e LEFT JOIN {}.content c ON c.id = e.content_id ").format(
            sql.Identifier(schema), sql.Identifier(schema)) + sql.SQL(C.pg_lateral())
        self._hash = sql.SQL("md5(" + texts + ")")
        self._bucket = sql.SQL(C.pg_bucket(bucket_us))

    def _where(self, scope: Scope, ids: list[int] | None = None) -> tuple[sql.Composable, list[Any]]:
        parts: list[sql.Composable] = [sql.SQL("TRUE")]
        params: list[Any] = []
        if self.since is not None:
            parts.append(sql.SQL("e.event_ts >= %s"))
            params.append(self.since)
        if self.until is not None:
            parts.append(sql.SQL("e.event_ts < %s"))
            params.append(self.until)
        if scope.bucket is not None:
            parts.append(self._bucket + sql.SQL(" = %s"))
            params.append(scope.bucket)
        if scope.lo is not None:
            parts.append(sql.SQL("e.id BETWEEN %s AND %s"))
            params += [scope.lo, scope.hi]
        if ids is not None:
            parts.append(sql.SQL("e.id = ANY(%s)"))
            params.append(list(ids))
        return sql.SQL(" AND ").join(parts), params

    def aggregate(self, scope: Scope, step: int | None) -> dict[int, Agg]:
        """Per bucket (step None) or per id sub-range `div(id - scope.lo, step)` of the scope."""
        where, params = self._where(scope)
        group = self._bucket if step is None else sql.SQL("div(e.id - {}, {})").format(
            sql.Literal(int(scope.lo)), sql.Literal(int(step)))  # type: ignore[arg-type]
        h1, h2 = C.pg_halves("h")
        q = sql.SQL(f"SELECT g, count(*), sum({h1}), sum({h2}), min(id), max(id) FROM ("
                    "SELECT e.id AS id, {} AS g, {} AS h {} WHERE {}) r GROUP BY g").format(
            group, self._hash, self._from, where)
        return {int(g): Agg(int(n), int(a), int(b), int(lo), int(hi)) for g, n, a, b, lo, hi in self._run(q, params)}

    def rows(self, scope: Scope, ids: list[int] | None = None) -> Rows:
        where, params = self._where(scope, ids)
        fields = sql.SQL(", ").join(sql.SQL(f"f.f_{n}") for n in C.COMPARED)
        q = sql.SQL("SELECT e.id, {} {} WHERE {}").format(fields, self._from, where)
        out: Rows = {}
        for row in self._run(q, params):
            out.setdefault(int(row[0]), []).append(tuple(row[1:]))
        return out

    def _run(self, q, params) -> list[tuple]:
        self.queries += 1
        with self.conn.cursor() as cur:
            cur.execute(q, params)
            return cur.fetchall()


class BigQuerySide:
    """The Pulse table in BigQuery (`bigquery.project / dataset / table`)."""

    def __init__(self, client, table_ref: str, since: datetime | None, until: datetime | None,
                 bucket_us: int, timeout_s: float = 120.0, cfg=None, slot: str | None = None) -> None:
        self.client = client
        self.cfg = cfg  # BigQueryConfig: the jobs' labels and maximum_bytes_billed (None: neither)
        self.slot = slot
        self.table = table_ref
        self.since, self.until = since, until
        self.bucket_us = bucket_us
        self.timeout = timeout_s
        self.queries = 0
        self._bucket = C.bq_bucket(bucket_us)

    def _where(self, scope: Scope, ids: list[int] | None = None) -> tuple[str, list]:
        from google.cloud import bigquery

        parts, params = ["TRUE"], []
        if self.since is not None:  # on the partitioning column: prunes partitions
            parts.append("t.event_ts >= @since")
            params.append(bigquery.ScalarQueryParameter("since", "TIMESTAMP", self.since))
        if self.until is not None:
            parts.append("t.event_ts < @until")
            params.append(bigquery.ScalarQueryParameter("until", "TIMESTAMP", self.until))
        if scope.bucket is not None:
            parts.append(f"{self._bucket} = @bucket")
            params.append(bigquery.ScalarQueryParameter("bucket", "INT64", scope.bucket))
        if scope.lo is not None:
            parts.append("t.event_id BETWEEN @lo AND @hi")
            params += [bigquery.ScalarQueryParameter("lo", "INT64", scope.lo),
                       bigquery.ScalarQueryParameter("hi", "INT64", scope.hi)]
        if ids is not None:
            parts.append("t.event_id IN UNNEST(@ids)")
            params.append(bigquery.ArrayQueryParameter("ids", "INT64", list(ids)))
        return " AND ".join(parts), params

    def aggregate(self, scope: Scope, step: int | None) -> dict[int, Agg]:
        where, params = self._where(scope)
        # The parentheses matter: the emulator translates DIV(a - b, c) as a - b // c.
        group = self._bucket if step is None else f"DIV((t.event_id - {int(scope.lo)}), {int(step)})"  # type: ignore[arg-type]
        h1, h2 = C.bq_halves("h")
        q = (f"SELECT g, COUNT(*), SUM({h1}), SUM({h2}), MIN(id), MAX(id) FROM ("
             f"SELECT t.event_id AS id, {group} AS g, TO_HEX(MD5({C.bq_text()})) AS h FROM {self.table} t "
             f"WHERE {where}) r GROUP BY g")
        return {int(g): Agg(int(n), int(a), int(b), int(lo), int(hi)) for g, n, a, b, lo, hi in self._run(q, params)}

    def rows(self, scope: Scope, ids: list[int] | None = None) -> Rows:
        where, params = self._where(scope, ids)
        fields = ", ".join(C.BQ_FIELDS[n] for n in C.COMPARED)
        out: Rows = {}
        for row in self._run(f"SELECT t.event_id, {fields} FROM {self.table} t WHERE {where}", params):
            out.setdefault(int(row[0]), []).append(tuple(row[1:]))
        return out

    def _run(self, q: str, params: list) -> list[tuple]:
        from google.cloud import bigquery

        from pulse.sinks.bigquery.client import classify, query_config, query_error, retries

        self.queries += 1
        config = (query_config(self.cfg, self.slot, "verify", params) if self.cfg is not None
                  else bigquery.QueryJobConfig(query_parameters=params))
        retry, job_retry = retries(self.timeout)
        try:
            job = self.client.query(q, job_config=config, retry=retry, job_retry=job_retry)
            return [tuple(r.values()) for r in job.result(timeout=self.timeout, retry=retry, job_retry=job_retry)]
        except Exception as exc:
            raise (query_error(exc, self.cfg, "verify query", q) if self.cfg is not None
                   else classify(exc, "verify query")) from exc


def compare_rows(src: Rows, dst: Rows) -> list[Finding]:
    """Findings for the rows of one leaf range (or a re-check), ids ascending."""
    out: list[Finding] = []
    for eid in sorted(set(src) | set(dst)):
        s, d = src.get(eid), dst.get(eid)
        if d is None:
            out.append(Finding(MISSING, str(eid)))
        elif s is None:
            out.append(Finding(EXTRA, str(eid)))
        elif len(d) > 1:
            out.append(Finding(DUPLICATE, str(eid), detail=f"{len(d)} rows"))
        elif s[0] != d[0]:
            out.append(Finding(DIFFERENT, str(eid), differing_columns(s[0], d[0])))
    return out


def differing_columns(a: tuple, b: tuple) -> tuple[str, ...]:
    return tuple(name for name, x, y in zip(C.COMPARED, a, b) if x != y)


class Bisection:
    """The walk over buckets and id ranges; `run()` returns the findings (before settling)."""

    def __init__(self, source: SourceSide, dest: BigQuerySide, *, fanout: int = 16, leaf_rows: int = 256) -> None:
        self.source, self.dest = source, dest
        self.fanout = max(2, fanout)
        self.leaf_rows = max(1, leaf_rows)
        self.buckets = 0
        self.rows_source = 0
        self.rows_destination = 0
        self.src_rows: Rows = {}
        self.dst_rows: Rows = {}

    def run(self) -> list[Finding]:
        top_s = self.source.aggregate(Scope(), None)
        top_d = self.dest.aggregate(Scope(), None)
        self.buckets = len(set(top_s) | set(top_d))
        self.rows_source = sum(a.count for a in top_s.values())
        self.rows_destination = sum(a.count for a in top_d.values())
        pending: list[tuple[Scope, int]] = []
        for b in sorted(set(top_s) | set(top_d)):
            s, d = top_s.get(b), top_d.get(b)
            if s is not None and d is not None and s.sums == d.sums:
                continue
            pending.append((Scope(b, *_span(s, d)), max(s.count if s else 0, d.count if d else 0)))
        while pending:
            scope, n = pending.pop()
            if n <= self.leaf_rows or scope.lo == scope.hi:
                self._leaf(scope)
                continue
            width = scope.hi - scope.lo + 1  # type: ignore[operator]
            step = -(-width // self.fanout)
            sub_s = self.source.aggregate(scope, step)
            sub_d = self.dest.aggregate(scope, step)
            for g in sorted(set(sub_s) | set(sub_d)):
                if not 0 <= g < self.fanout:
                    raise TerminalError(f"verify: sub-range {g} of {scope} is outside 0..{self.fanout - 1}",
                                        hint="the destination's SQL engine computed DIV differently; report it")
                s, d = sub_s.get(g), sub_d.get(g)
                if s is not None and d is not None and s.sums == d.sums:
                    continue
                lo = scope.lo + g * step  # type: ignore[operator]
                hi = min(lo + step - 1, scope.hi)  # type: ignore[type-var]
                pending.append((Scope(scope.bucket, lo, hi), max(s.count if s else 0, d.count if d else 0)))
        return self.findings()

    def _leaf(self, scope: Scope) -> None:
        self.src_rows.update(self.source.rows(scope))
        for eid, rows in self.dest.rows(scope).items():
            self.dst_rows.setdefault(eid, []).extend(rows)

    def findings(self) -> list[Finding]:
        """Leaf rows compared; an id missing in one bucket and extra in another is `different`."""
        src, dst = dict(self.src_rows), dict(self.dst_rows)
        moved = [eid for eid in set(src) ^ set(dst)]
        if moved:
            # Fetch the other side of ids seen on one side only (their event_ts differs, or an
            # equal-checksum bucket hid nothing but the other half of the move).
            only_src = [e for e in moved if e in src]
            only_dst = [e for e in moved if e in dst]
            if only_src:
                for eid, rows in self.dest.rows(Scope(), only_src).items():
                    dst[eid] = rows
            if only_dst:
                for eid, rows in self.source.rows(Scope(), only_dst).items():
                    src[eid] = rows
        return compare_rows(src, dst)


def _span(s: Agg | None, d: Agg | None) -> tuple[int, int]:
    los = [a.lo for a in (s, d) if a is not None]
    his = [a.hi for a in (s, d) if a is not None]
    return min(los), max(his)


def recheck(source: SourceSide, dest: BigQuerySide, findings: list[Finding]) -> list[Finding]:
    """The same rows fetched again from both sides and compared."""
    ids = sorted({int(f.key) for f in findings})
    if not ids:
        return []
    return compare_rows(source.rows(Scope(), ids), dest.rows(Scope(), ids))


def settle(conn, slot: str, settle_s: float, poll_s: float = 0.5) -> str | None:
    """Wait until the slot's consumer has made durable everything committed now; None when it has.

    Returns why it did not (no consumer on the slot / timed out), for the report.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        target = cur.fetchone()[0]
    deadline = time.monotonic() + settle_s
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT active, confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                        "WHERE slot_name = %s", (target, slot))
            row = cur.fetchone()
        if row is None:
            return f"no replication slot {slot!r}: nothing is in flight, the findings stand"
        active, caught_up = row
        if caught_up:
            return None
        if not active:
            return f"slot {slot!r} has no consumer: the sink is stopped, the findings stand"
        if time.monotonic() > deadline:
            return f"the sink did not reach the source's position {target} within {settle_s:g}s"
        time.sleep(poll_s)


def verify_bigquery(settings: Settings, *, since: datetime | None, until: datetime | None,
                    bucket_s: int = 86_400, fanout: int = 16, leaf_rows: int = 256, settle_s: float = 30.0,
                    client=None) -> Result:
    """Run the bisection, settle what it found, and return the result."""
    from pulse.source.db import connect
    from pulse.sinks.bigquery import schema as S
    from pulse.sinks.bigquery.client import make_client

    started = time.monotonic()
    cfg = settings.bigquery
    own_client = client is None
    client = client or make_client(cfg)
    table = S.ref(client.project, S.check_identifier("dataset", cfg.dataset), S.check_identifier("table", cfg.table))
    conn = connect(settings.database)
    conn.autocommit = True
    try:
        source = SourceSide(conn, settings.database.source_schema, since, until, bucket_s * 1_000_000)
        dest = BigQuerySide(client, table, since, until, bucket_s * 1_000_000, cfg.request_timeout_s, cfg=cfg,
                            slot=settings.database.slot)
        walk = Bisection(source, dest, fanout=fanout, leaf_rows=leaf_rows)
        findings = walk.run()
        result = Result("bigquery", rows_source=walk.rows_source, rows_destination=walk.rows_destination,
                        buckets=walk.buckets)
        if findings:
            deadline = time.monotonic() + settle_s
            why = settle(conn, settings.database.slot, settle_s)
            if why is None:
                # The slot is acknowledged once a change is durable in the sink (for the batch
                # path: in its spool); the table may load it a moment later. Re-check the
                # differing rows until they agree or the settle time is over.
                again = recheck(source, dest, findings)
                while again and time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    again = recheck(source, dest, again)
                result.settled = len({f.key for f in findings} - {f.key for f in again})
                findings = again
            else:
                result.notes.append(why)
        result.findings = findings
        result.queries = source.queries + dest.queries
        result.seconds = time.monotonic() - started
        return result
    finally:
        conn.close()
        if own_client:
            client.close()


def id_ranges(ids: Iterable[int], gap: int = 1) -> list[tuple[int, int]]:
    """Sorted ids as inclusive ranges of consecutive ids (`gap` 1: only adjacent ids merge)."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if out and i - out[-1][1] <= gap:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out
