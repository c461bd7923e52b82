"""The odd rows real clients send, injected on purpose (`--anomalies FRACTION`).

Each event is made anomalous with probability FRACTION, of one kind drawn by
`KIND_WEIGHTS`; the kind is written into its payload (`raw_payload.anomaly`)
and counted, so tests and people can find every one:

| kind | what the row looks like |
|---|---|
| null_content | `content_id` NULL (a client that lost track of what it played) |
| null_duration | a pause / finish with `duration_ms` NULL |
| negative_duration | `duration_ms` < 0 (a client clock jump) |
| duration_overflow | `duration_ms` 5x to 100x the content's length |
| zero_length_content | an event on content whose `length_seconds` is 0 |
| odd_device | `device` with emoji, RTL marks, zero-width characters, control characters, or 2,000+ characters |
| late_event | `event_ts` 2 to 90 minutes before it should be (an offline client syncing) |
| future_event | `event_ts` 2 minutes to 3 hours ahead (a wrong device clock) |
| huge_payload | a raw_payload of about 1 MB (rare: a client dumping its debug log) |

A kind that cannot apply to an event (no length to overflow, no length-0
content in the catalogue) falls back to another, recorded as what was done.
The UPDATEs and DELETEs of past events are not row shapes: the writers run
them (`UPDATE_KIND`, `DELETE_KIND`), at `MUTATION_SHARE` x FRACTION per event
each, and count them here too.

The injector draws from its own `random.Random`, so the events it leaves
alone are exactly those of a run without anomalies.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import accumulate
from random import Random

from pulse.generator.events import Event

KIND_WEIGHTS: dict[str, float] = {
    "null_content": 0.16,
    "null_duration": 0.12,
    "negative_duration": 0.14,
    "duration_overflow": 0.12,
    "zero_length_content": 0.08,
    "odd_device": 0.14,
    "late_event": 0.12,
    "future_event": 0.10,
    "huge_payload": 0.0004,
}
ROW_KINDS = tuple(KIND_WEIGHTS)
UPDATE_KIND = "update"
DELETE_KIND = "delete"
# Per event, the chance of an UPDATE (and, separately, of a DELETE) of a past event is this x FRACTION.
MUTATION_SHARE = 0.02
# About 1 MiB of payload for huge_payload.
HUGE_PAYLOAD_BYTES = 1 << 20

ODD_DEVICES: tuple[str, ...] = (
    "📱 iPhone",
    "ios 🚀🔥",
    "android\u200b",  # zero-width space
    "web\u200d-chrome",  # zero-width joiner
    "\ufeffweb-safari",  # byte order mark
    "\u202etv-trams",  # right-to-left override
    "جهاز أندرويد",  # Arabic: "Android device"
    "מכשיר-ios",  # Hebrew
    "smart\ttv",  # a tab (COPY must escape it)
    "roku\nbox",  # a newline
    "web\\firefox",  # a backslash
    "Ｉｏｓ",  # full-width letters
    "z\u0351\u0352\u0353\u0354\u0355algo-tv",  # combining marks
    "smart-tv/" + "Mozilla/5.0 (Linux; Tizen 6.5) AppleWebKit/537.36 (KHTML, like Gecko) " * 30,
)

_LOG_LINE = (
    "2024-08-01T12:00:00.000Z DEBUG player.buffer state=stalled bitrate_kbps=1820 "
    "cdn=edge-fra-3 retry=3 segment=/v/hls/1080p/seg-00042.ts err=ETIMEDOUT\n"
)


def huge_debug_dump() -> str:
    return (_LOG_LINE * (HUGE_PAYLOAD_BYTES // len(_LOG_LINE) + 1))[:HUGE_PAYLOAD_BYTES]


class AnomalyInjector:
    """Makes a FRACTION of events anomalous and counts each kind."""

    def __init__(
        self,
        rng: Random,
        fraction: float,
        *,
        lengths: Mapping[str, int | None],
        zero_length_ids: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("anomalies must be a fraction between 0 and 1")
        self.fraction = fraction
        self.counts: Counter[str] = Counter()
        self._rng = rng
        self._lengths = lengths
        self._zero = list(zero_length_ids)
        self._cum = list(accumulate(KIND_WEIGHTS.values()))
        self._dump: str | None = None

    @property
    def mutation_probability(self) -> float:
        return self.fraction * MUTATION_SHARE

    def draw_mutation(self) -> str | None:
        """Per event: UPDATE_KIND, DELETE_KIND or None (the writer runs it)."""
        if self.fraction <= 0.0:
            return None
        r = self._rng.random()
        p = self.fraction * MUTATION_SHARE
        if r < p:
            return UPDATE_KIND
        if r < 2 * p:
            return DELETE_KIND
        return None

    def count(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] += n

    def pick(self, n: int) -> int:
        """An index in range(n) (which past event a live mutation hits)."""
        return int(self._rng.random() * n)

    def choose(self, n: int, population: int) -> list[int]:
        """`n` distinct indexes out of `population` (for mutations after a bulk load)."""
        return self._rng.sample(range(population), min(n, population))

    def __call__(self, ev: Event) -> Event:
        rng = self._rng
        if self.fraction <= 0.0 or rng.random() >= self.fraction:
            return ev
        kind = ROW_KINDS[bisect_right(self._cum, rng.random() * self._cum[-1])]
        return self.apply(ev, kind)

    def apply(self, ev: Event, kind: str) -> Event:
        """Make `ev` anomalous of `kind` (or its fallback) and record it."""
        rng = self._rng
        length = self._lengths.get(ev.content_id) if ev.content_id is not None else None
        if kind == "duration_overflow" and not length:
            kind = "negative_duration"
        if kind == "null_duration" and ev.duration_ms is None:
            kind = "negative_duration"
        if kind == "zero_length_content" and not self._zero:
            kind = "null_content"
        payload = dict(ev.raw_payload)
        payload["anomaly"] = kind
        if kind == "null_content":
            ev = ev._replace(content_id=None)
        elif kind == "null_duration":
            ev = ev._replace(duration_ms=None)
        elif kind == "negative_duration":
            ev = ev._replace(duration_ms=-rng.randint(1, 600_000))
        elif kind == "duration_overflow":
            ev = ev._replace(duration_ms=min(2**31 - 1, int(length * 1000 * rng.uniform(5, 100))))
        elif kind == "zero_length_content":
            ev = ev._replace(content_id=self._zero[int(rng.random() * len(self._zero))])
        elif kind == "odd_device":
            ev = ev._replace(device=ODD_DEVICES[int(rng.random() * len(ODD_DEVICES))])
        elif kind == "late_event":
            ev = ev._replace(event_ts_ms=ev.event_ts_ms - rng.randint(120_000, 5_400_000))
        elif kind == "future_event":
            ev = ev._replace(event_ts_ms=ev.event_ts_ms + rng.randint(120_000, 10_800_000))
        elif kind == "huge_payload":
            if self._dump is None:
                self._dump = huge_debug_dump()
            payload["debug_dump"] = self._dump
        else:  # pragma: no cover - ROW_KINDS is closed
            raise ValueError(f"unknown anomaly kind {kind!r}")
        self.counts[kind] += 1
        return ev._replace(raw_payload=payload)


__all__ = [
    "AnomalyInjector",
    "DELETE_KIND",
    "KIND_WEIGHTS",
    "MUTATION_SHARE",
    "ODD_DEVICES",
    "ROW_KINDS",
    "UPDATE_KIND",
    "huge_debug_dump",
]
