"""Builders for the generator's pure tests: catalogues and bulk runs wired as the runner wires them."""

from __future__ import annotations

from datetime import datetime, timezone

from pulse.generator.anomalies import AnomalyInjector
from pulse.generator.content import build_catalogue, build_zero_length, make_faker
from pulse.generator.events import EventFactory
from pulse.generator.runner import Streams

ANCHOR = datetime(2024, 8, 1, tzinfo=timezone.utc)
SINCE_MS = int(ANCHOR.timestamp() * 1000)
UNTIL_MS = SINCE_MS + 2 * 86_400_000


def catalogue(seed: int = 1, count: int = 200, zero_length: int = 0):
    streams = Streams.from_seed(seed)
    items = build_catalogue(count, streams.content, make_faker(seed), published_before=ANCHOR)
    if zero_length:
        items += build_zero_length(zero_length, streams.zero_length, make_faker(seed + 1), published_before=ANCHOR)
    return items


def history(seed: int = 1, count: int = 20_000, anomalies: float = 0.0, chunk_rows: int = 5_000, users: int = 500):
    """(events, injector or None) of a bulk run, as the runner wires it."""
    streams = Streams.from_seed(seed)
    items = build_catalogue(200, streams.content, make_faker(seed), published_before=ANCHOR)
    if anomalies:
        items += build_zero_length(4, streams.zero_length, make_faker(seed + 1), published_before=ANCHOR)
    factory = EventFactory(items, streams.events, users=users)
    injector = None
    if anomalies:
        injector = AnomalyInjector(
            streams.anomalies,
            anomalies,
            lengths={c.id: c.length_seconds for c in items},
            zero_length_ids=[c.id for c in items if c.length_seconds == 0],
        )
    events = [
        ev
        for chunk in factory.history(count, SINCE_MS, UNTIL_MS, chunk_rows=chunk_rows, transform=injector)
        for ev in chunk
    ]
    return events, injector, items
