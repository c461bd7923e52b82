"""The canonical text of a row and its checksum, written once for PostgreSQL and once for BigQuery.

A row of the BigQuery table is compared on the 14 columns that follow from
the source row and its content row (docs/verify.md, "The checksum"):

    event_id content_id user_id event_type event_ts duration_ms device raw_payload
    content_slug content_title content_type length_seconds engagement_seconds engagement_pct

Each value is rendered as text (`FIELDS`), a NULL as `~` and any other value
as `<length in characters>:<text>` (so no separator inside a value can make
two rows alike), and the fields are joined by `|`. The row hash is the md5
of that text (UTF-8); its first 16 hex digits are two 32-bit numbers `h1`,
`h2`. A set of rows reduces to (count, sum(h1), sum(h2)): order-independent,
and neither engine overflows (a sum of 32-bit values stays below 2^63 for
fewer than 2^31 rows). `fold` turns the two sums into one 64-bit checksum.

Renderings that make the two engines agree:

- integers and strings as themselves (uuids in their lower-case text form);
- `event_ts` as integer microseconds since the epoch (NULL where the source
  holds a time BigQuery cannot: 'infinity', years beyond 9999);
- NUMERIC values as the integer `value * 10^9` (NUMERIC's scale), so 1.5 and
  1.500 are the same;
- `raw_payload` as compact JSON (no whitespace outside strings) with trailing
  zeros of fractions dropped (2.50 -> 2.5, 100.0 -> 100); keys in the order
  the value holds them (PostgreSQL's jsonb order, which is what Pulse loads).

The source side computes the enrichment itself, in SQL, from MISSION.md's
rules (not from `pulse.transform`): seconds = duration_ms / 1000 (NULL when
negative), pct = duration_ms / (1000 * length) rounded half away from zero to
2 decimals (NULL when the length is NULL or <= 0 or the duration negative).
"""

from __future__ import annotations

import hashlib

#: The compared columns, in canonical order.
COMPARED = ("event_id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload",
            "content_slug", "content_title", "content_type", "length_seconds", "engagement_seconds",
            "engagement_pct")

# Compact JSON: remove whitespace outside strings; then drop trailing zeros of fractions.
# Both engines run the same two regular expressions (RE2 in BigQuery, ARE in PostgreSQL).
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
JSON_SPACE_RE = f"({_JSON_STRING})|\\s+"
JSON_ZEROS_RE = f"({_JSON_STRING})|(\\.[0-9]*[1-9])0+([\\]}},]|$)|\\.0+([\\]}},]|$)"

# -- PostgreSQL ------------------------------------------------------------------------------------------
# `e` is engagement_events, `c` the LEFT JOINed content row.

_PG_TS_OK = "(e.event_ts >= '0001-01-01 00:00:00+00' AND e.event_ts < '10000-01-01 00:00:00+00')"
_PG_JSON_COMPACT = f"regexp_replace(e.raw_payload::text, '{JSON_SPACE_RE}', '\\1', 'g')"

PG_FIELDS = {
    "event_id": "e.id::text",
    "content_id": "e.content_id::text",
    "user_id": "e.user_id::text",
    "event_type": "e.event_type",
    "event_ts": f"CASE WHEN {_PG_TS_OK} THEN (extract(epoch FROM e.event_ts) * 1000000)::bigint::text END",
    "duration_ms": "e.duration_ms::text",
    "device": "e.device",
    "raw_payload": f"regexp_replace({_PG_JSON_COMPACT}, '{JSON_ZEROS_RE}', '\\1\\2\\3\\4', 'g')",
    "content_slug": "c.slug",
    "content_title": "c.title",
    "content_type": "c.content_type",
    "length_seconds": "c.length_seconds::text",
    # seconds * 10^9 = ms * 10^6
    "engagement_seconds": "CASE WHEN e.duration_ms >= 0 THEN (e.duration_ms::bigint * 1000000)::text END",
    # pct * 10^9 = round_half_away(ms / (10 * length)) hundredths * 10^7; numeric round() is half away from zero
    "engagement_pct": "CASE WHEN e.duration_ms >= 0 AND c.length_seconds > 0 THEN "
                      "(round(e.duration_ms::numeric / (10 * c.length_seconds::numeric)) * 10000000)::bigint::text END",
}

PG_BUCKET_NULL = -(2 ** 62)  # the bucket of rows whose event_ts is NULL in the canonical form


def pg_lateral() -> str:
    """The rendered fields as columns `f.f_<name>`, computed once per row.

    `OFFSET 0` keeps PostgreSQL from pulling the subquery up into the row text,
    where each field would be computed three times (is it NULL, its length,
    its value) and md5 twice: 27x slower on the same rows.
    """
    fields = ", ".join(f"{PG_FIELDS[n]} AS f_{n}" for n in COMPARED)
    return f"CROSS JOIN LATERAL (SELECT {fields} OFFSET 0) f"


def pg_text() -> str:
    """The canonical row text over the columns of `pg_lateral()`."""
    return " || '|' || ".join(
        f"(CASE WHEN f.f_{n} IS NULL THEN '~' ELSE length(f.f_{n})::text || ':' || f.f_{n} END)" for n in COMPARED)


def pg_bucket(bucket_us: int) -> str:
    return f"coalesce(div(f.f_event_ts::bigint, {int(bucket_us)}), {PG_BUCKET_NULL})"


# -- BigQuery ---------------------------------------------------------------------------------------------
# `t` is the Pulse table.

BQ_FIELDS = {
    "event_id": "CAST(t.event_id AS STRING)",
    "content_id": "t.content_id",
    "user_id": "t.user_id",
    "event_type": "t.event_type",
    "event_ts": "CAST(UNIX_MICROS(t.event_ts) AS STRING)",
    "duration_ms": "CAST(t.duration_ms AS STRING)",
    "device": "t.device",
    "raw_payload": f"REGEXP_REPLACE(TO_JSON_STRING(t.raw_payload), r'{JSON_ZEROS_RE}', r'\\1\\2\\3\\4')",
    "content_slug": "t.content_slug",
    "content_title": "t.content_title",
    "content_type": "t.content_type",
    "length_seconds": "CAST(t.length_seconds AS STRING)",
    "engagement_seconds": "CAST(CAST(t.engagement_seconds * 1000000000 AS INT64) AS STRING)",
    "engagement_pct": "CAST(CAST(t.engagement_pct * 1000000000 AS INT64) AS STRING)",
}


def _bq_field(expr: str) -> str:
    return f"(CASE WHEN ({expr}) IS NULL THEN '~' ELSE CONCAT(CAST(LENGTH({expr}) AS STRING), ':', {expr}) END)"


def bq_text() -> str:
    return "CONCAT(" + ", '|', ".join(_bq_field(BQ_FIELDS[n]) for n in COMPARED) + ")"


def bq_bucket(bucket_us: int) -> str:
    return f"IFNULL(DIV(UNIX_MICROS(t.event_ts), {int(bucket_us)}), {PG_BUCKET_NULL})"


# -- the hash and the aggregate ------------------------------------------------------------------------------


def pg_halves(h: str) -> tuple[str, str]:
    """h1, h2 of an md5 hex digest column `h`."""
    return (f"('x' || substr({h}, 1, 8))::bit(32)::bigint", f"('x' || substr({h}, 9, 8))::bit(32)::bigint")


def bq_halves(h: str) -> tuple[str, str]:
    """h1, h2 of a hex digest column `h`."""
    return (f"CAST(CONCAT('0x', SUBSTR({h}, 1, 8)) AS INT64)", f"CAST(CONCAT('0x', SUBSTR({h}, 9, 8)) AS INT64)")


def fold(sum_h1: int, sum_h2: int) -> int:
    """One 64-bit checksum from the two sums: (sum_h1 * 2^32 + sum_h2) mod 2^64."""
    return ((int(sum_h1) << 32) + int(sum_h2)) & 0xFFFFFFFFFFFFFFFF


def render(values: dict[str, str | None]) -> str:
    """The canonical text of one row from its rendered field values (Python, for tests and the docs)."""
    parts = []
    for name in COMPARED:
        v = values.get(name)
        parts.append("~" if v is None else f"{len(v)}:{v}")
    return "|".join(parts)


def halves(text: str) -> tuple[int, int]:
    """(h1, h2) of a canonical text, as both engines compute them."""
    digest = hashlib.md5(text.encode("utf-8")).hexdigest()
    return int(digest[:8], 16), int(digest[8:16], 16)
