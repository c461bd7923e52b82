"""The content catalogue: building it (pure) and seeding it (once, when empty).

`build_catalogue` makes podcasts, newsletters and videos with Faker titles,
unique slugs and publish times in the past; newsletters have no length
(`length_seconds` NULL). With anomalies on, `build_zero_length` adds a few
podcasts / videos of length 0 (a broken upload, a live-stream placeholder):
the row the enrichment rule "pct is NULL when length_seconds is 0" is for.

`ensure_content` seeds the table only when it is empty, under a transaction
advisory lock so two generators started together seed it once, then loads the
whole catalogue in a stable order (publish_ts, id) so that a seeded run and a
run over an already seeded table draw the same events from the same seed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from random import Random
from typing import Any

from psycopg2 import sql
from psycopg2.extras import execute_values

from pulse.log import get_logger

log = get_logger(__name__)

CONTENT_TYPES = ("podcast", "newsletter", "video")
# Share of each type in a seeded catalogue.
TYPE_WEIGHTS = {"podcast": 0.40, "newsletter": 0.25, "video": 0.35}
# Seeded content is published up to this long before the anchor time.
PUBLISH_WINDOW = timedelta(days=730)
# Key of the advisory lock taken while seeding (any stable 64-bit number).
SEED_LOCK_KEY = 0x70756C7365_636F  # "pulse" "co"

_SLUG_RE = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class ContentItem:
    """One row of `content`."""

    id: str
    slug: str
    title: str
    content_type: str
    length_seconds: int | None
    publish_ts: datetime


def rng_uuid(rng: Random) -> str:
    """A version-4 UUID drawn from `rng` (reproducible, unlike uuid4())."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def slugify(title: str) -> str:
    return _SLUG_RE.sub("-", title.lower()).strip("-")[:60].rstrip("-") or "item"


def _length_seconds(rng: Random, content_type: str) -> int | None:
    if content_type == "newsletter":
        return None
    if content_type == "podcast":
        # Episodes of 10 min to 3 h, most around 40 min.
        return int(min(10_800, max(600, rng.lognormvariate(7.8, 0.45))))
    # Videos: 30 s to 1 h, most around 8 min.
    return int(min(3_600, max(30, rng.lognormvariate(6.2, 0.8))))


def _title(faker: Any, rng: Random, content_type: str) -> str:
    if content_type == "podcast":
        show = faker.catch_phrase().title()
        return f"{show}, Ep. {rng.randint(1, 240)}: {faker.bs().capitalize()}"
    if content_type == "newsletter":
        return f"{faker.company()} Weekly: {faker.sentence(nb_words=5).rstrip('.')}"
    return faker.sentence(nb_words=rng.randint(4, 9)).rstrip(".")


def _publish_ts(rng: Random, before: datetime) -> datetime:
    back = rng.uniform(3_600, PUBLISH_WINDOW.total_seconds())
    return (before - timedelta(seconds=back)).replace(microsecond=0)


def build_catalogue(count: int, rng: Random, faker: Any, *, published_before: datetime) -> list[ContentItem]:
    """`count` content rows of all three types (each present when count >= 3)."""
    types = list(TYPE_WEIGHTS)
    weights = list(TYPE_WEIGHTS.values())
    slugs: set[str] = set()
    items = []
    for i in range(count):
        content_type = types[i] if i < len(types) else rng.choices(types, weights)[0]
        title = _title(faker, rng, content_type)
        slug = f"{slugify(title)}-{rng.getrandbits(24):06x}"
        while slug in slugs:
            slug = f"{slugify(title)}-{rng.getrandbits(24):06x}"
        slugs.add(slug)
        items.append(
            ContentItem(
                id=rng_uuid(rng),
                slug=slug,
                title=title,
                content_type=content_type,
                length_seconds=_length_seconds(rng, content_type),
                publish_ts=_publish_ts(rng, published_before),
            )
        )
    return items


def zero_length_count(count: int) -> int:
    """How many length-0 items an anomalous catalogue of `count` gets: a few."""
    return max(1, round(count * 0.02))


def build_zero_length(count: int, rng: Random, faker: Any, *, published_before: datetime) -> list[ContentItem]:
    """Podcasts / videos whose `length_seconds` is 0 (only seeded with anomalies on)."""
    items = []
    for _ in range(count):
        content_type = rng.choice(("podcast", "video"))
        title = f"{_title(faker, rng, content_type)} (live)"
        items.append(
            ContentItem(
                id=rng_uuid(rng),
                slug=f"{slugify(title)}-z{rng.getrandbits(24):06x}",
                title=title,
                content_type=content_type,
                length_seconds=0,
                publish_ts=_publish_ts(rng, published_before),
            )
        )
    return items


def make_faker(seed: int) -> Any:
    """A seeded en_US Faker (imported here: it is slow to import, and an extra: `pulse-cdc[generator]`)."""
    try:
        from faker import Faker
    except ModuleNotFoundError as exc:
        from pulse.errors import ConfigError

        raise ConfigError("the workload generator needs Faker, which is not installed",
                          hint="pip install 'pulse-cdc[generator]'") from exc

    faker = Faker("en_US")
    faker.seed_instance(seed)
    return faker


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("content"))


def load_content(cur, schema: str) -> list[ContentItem]:
    """The whole catalogue, ordered by (publish_ts, id)."""
    cur.execute(
        sql.SQL(
            "SELECT id::text, slug, title, content_type, length_seconds, publish_ts FROM {} ORDER BY publish_ts, id"
        ).format(_table(schema))
    )
    return [ContentItem(*row) for row in cur.fetchall()]


def ensure_content(
    conn,
    schema: str,
    *,
    count: int,
    rng: Random,
    zero_length_rng: Random | None,
    published_before: datetime,
) -> tuple[list[ContentItem], int]:
    """Seed `content` when it is empty; return (the catalogue, rows seeded now).

    `zero_length_rng` is given only with anomalies on: it draws the few
    length-0 items from its own stream, so the normal items are the same with
    or without anomalies.
    """
    if published_before.tzinfo is None:
        published_before = published_before.replace(tzinfo=timezone.utc)
    seeded = 0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SEED_LOCK_KEY,))
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_table(schema)))
        if not cur.fetchone()[0] and count > 0:
            faker = make_faker(rng.getrandbits(32))
            items = build_catalogue(count, rng, faker, published_before=published_before)
            if zero_length_rng is not None:
                faker.seed_instance(zero_length_rng.getrandbits(32))
                items += build_zero_length(
                    zero_length_count(count), zero_length_rng, faker, published_before=published_before
                )
            execute_values(
                cur,
                sql.SQL(
                    "INSERT INTO {} (id, slug, title, content_type, length_seconds, publish_ts) VALUES %s"
                ).format(_table(schema)),
                [(c.id, c.slug, c.title, c.content_type, c.length_seconds, c.publish_ts) for c in items],
                page_size=1000,
            )
            seeded = len(items)
            log.info("generator.content.seeded", rows=seeded, zero_length=sum(c.length_seconds == 0 for c in items))
        catalogue = load_content(cur, schema)
    return catalogue, seeded


__all__ = [
    "CONTENT_TYPES",
    "ContentItem",
    "build_catalogue",
    "build_zero_length",
    "ensure_content",
    "load_content",
    "make_faker",
    "rng_uuid",
    "slugify",
    "zero_length_count",
]
