"""Pure event shapes: users, sessions and popularity, no I/O.

`EventFactory` turns a content catalogue and a `random.Random` into
engagement events shaped like a media app's telemetry:

- **Popularity** is Zipf-like: content is ranked by a seeded shuffle and
  drawn with weight 1 / rank**ZIPF_S, so a few items get most of the plays.
- **Users** come from a bounded pool (`users`), with UUIDs drawn from the RNG,
  a home device, a country and an app version; a few heavy users make a large
  share of the sessions, and one session in seven is on another device.
- **Sessions** of a podcast or video: maybe a click (discovery), then `play`
  and a listening segment ending in `pause` (maybe resumed later with another
  `play`) or in `finish` at the end of the content; maybe a closing click.
  A newsletter session is an open (`play`), a read ending in `pause` or
  `finish`, and link clicks.
- **duration_ms** is the time consumed in the segment a `pause` or `finish`
  closes; `play` and `click` carry none (NULL), so summing `duration_ms`
  counts every second of consumption once.
- **raw_payload** is a small JSON object: app_version, country, session_id,
  seq (the event's index in its session), network, and position_ms (media) or
  target (clicks).

Timestamps are integer milliseconds since the epoch (`event_ts_ms`). The
factory makes the same events from the same RNG state: no clock, no uuid4,
no Faker in the per-event path. Anomalies are applied by
`pulse.generator.anomalies`, drawn from their own RNG stream, so turning them
on alters only the events it declares.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from operator import itemgetter
from random import Random
from typing import Any, NamedTuple

from pulse.generator.content import ContentItem, rng_uuid

EVENT_TYPES = ("play", "pause", "finish", "click")

# Device mix of the sessions (home devices are drawn from it too).
DEVICES: tuple[tuple[str, float], ...] = (
    ("ios", 0.29),
    ("android", 0.27),
    ("web-chrome", 0.18),
    ("web-safari", 0.09),
    ("web-firefox", 0.04),
    ("web-edge", 0.03),
    ("smart-tv", 0.05),
    ("android-tv", 0.03),
    ("roku", 0.02),
)
COUNTRIES: tuple[tuple[str, float], ...] = (
    ("US", 0.34), ("GB", 0.09), ("DE", 0.07), ("IN", 0.08), ("BR", 0.06), ("FR", 0.05), ("CA", 0.05),
    ("AU", 0.03), ("MX", 0.04), ("EG", 0.03), ("SA", 0.03), ("JP", 0.03), ("NG", 0.03), ("ES", 0.03),
    ("NL", 0.02), ("SE", 0.02),
)
APP_VERSIONS: tuple[tuple[str, float], ...] = (
    ("6.4.2", 0.46), ("6.4.1", 0.20), ("6.3.0", 0.16), ("6.2.7", 0.10), ("5.9.12", 0.08),
)
WEB_VERSIONS: tuple[tuple[str, float], ...] = (
    ("web-2024.08.3", 0.55), ("web-2024.08.2", 0.30), ("web-2024.07.9", 0.15),
)
CLICK_TARGETS = ("share", "like", "related", "cta", "chapter", "subscribe")
NEWSLETTER_TARGETS = ("link", "link", "link", "share", "unsubscribe", "cta")

# Popularity exponent: weight of rank r is 1 / r**ZIPF_S.
ZIPF_S = 1.0
# Relative activity by UTC hour (low at night, peak in the evening).
DIURNAL = (
    0.45, 0.35, 0.25, 0.18, 0.15, 0.15, 0.22, 0.40, 0.60, 0.65, 0.62, 0.62,
    0.66, 0.68, 0.64, 0.62, 0.66, 0.74, 0.86, 0.96, 1.00, 0.95, 0.80, 0.60,
)
_HOUR_MS = 3_600_000
_DAY_HOURS = 24
# A media file with no length (NULL on a podcast / video) is played as if this long.
_DEFAULT_MEDIA_SECONDS = 1_800
_EVENT_TS = itemgetter(3)


class Event(NamedTuple):
    """One `engagement_events` row before it is written (the id is the database's)."""

    content_id: str | None
    user_id: str
    event_type: str
    event_ts_ms: int
    duration_ms: int | None
    device: str
    raw_payload: dict[str, Any]


def _cumulative(pairs: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
    names = [name for name, _ in pairs]
    cum = list(accumulate(weight for _, weight in pairs))
    return names, [c / cum[-1] for c in cum]


def zipf_weights(n: int, s: float = ZIPF_S) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


class EventFactory:
    """Sessions of realistic events over a catalogue, reproducible from `rng`."""

    def __init__(self, catalogue: Sequence[ContentItem], rng: Random, *, users: int = 5_000) -> None:
        if users < 1:
            raise ValueError("users must be >= 1")
        # Length-0 content exists only as an anomaly: it is never drawn by popularity.
        playable = [c for c in catalogue if c.length_seconds != 0]
        if not playable:
            raise ValueError("the catalogue has no playable content")
        self._rng = rng
        order = list(range(len(playable)))
        rng.shuffle(order)
        self._content = [
            (playable[i].id, playable[i].content_type, playable[i].length_seconds) for i in order
        ]
        self._cum = list(accumulate(zipf_weights(len(self._content))))
        self._total = self._cum[-1]
        self._dev_names, self._dev_cum = _cumulative(DEVICES)
        self._users = self._make_users(users)

    @property
    def content_by_rank(self) -> list[str]:
        """Content ids, most popular first."""
        return [c[0] for c in self._content]

    def _make_users(self, n: int) -> list[tuple[str, str, str, str, str]]:
        rng = self._rng
        countries, country_cum = _cumulative(COUNTRIES)
        apps, app_cum = _cumulative(APP_VERSIONS)
        webs, web_cum = _cumulative(WEB_VERSIONS)
        out = []
        for _ in range(n):
            uid = rng_uuid(rng)
            device = self._dev_names[bisect_right(self._dev_cum, rng.random())]
            country = countries[bisect_right(country_cum, rng.random())]
            app = apps[bisect_right(app_cum, rng.random())]
            web = webs[bisect_right(web_cum, rng.random())]
            out.append((uid, device, country, app, web))
        return out

    def session(self, start_ms: int, end_ms: int | None = None) -> list[Event]:
        """One user's session starting at `start_ms`; events at or after `end_ms` are cut off."""
        rng = self._rng
        r = rng.random
        log = math.log
        users = self._users
        uid, device, country, app, web = users[int(len(users) * r() ** 1.5)]
        if r() < 0.15:
            device = self._dev_names[bisect_right(self._dev_cum, r())]
        version = web if device.startswith("web-") else app
        cid, ctype, length = self._content[bisect_right(self._cum, r() * self._total)]
        sid = "%016x" % rng.getrandbits(64)
        if device in ("smart-tv", "android-tv", "roku"):
            network = "ethernet" if r() < 0.4 else "wifi"
        elif device.startswith("web-"):
            network = "wifi" if r() < 0.8 else "ethernet"
        else:
            network = "wifi" if r() < 0.6 else "cellular"
        end = end_ms if end_ms is not None else 1 << 62
        events: list[Event] = []
        add = events.append
        t = start_ms
        seq = 0

        if ctype == "newsletter":
            if r() < 0.7:
                add(Event(cid, uid, "play", t, None, device, {
                    "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network}))
                seq += 1
                read_ms = int(-150_000 * log(1.0 - r())) + 2_000
                t += read_ms
                if t < end:
                    kind = "finish" if r() < 0.35 else "pause"
                    add(Event(cid, uid, kind, t, read_ms, device, {
                        "app_version": version, "country": country, "session_id": sid, "seq": seq,
                        "network": network}))
                    seq += 1
            clicks = 1 if not events else 0
            while r() < 0.45 and clicks < 4:
                clicks += 1
            for _ in range(clicks):
                t += int(-20_000 * log(1.0 - r())) + 300
                if t >= end:
                    break
                add(Event(cid, uid, "click", t, None, device, {
                    "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network,
                    "target": NEWSLETTER_TARGETS[int(r() * 6)]}))
                seq += 1
            return events

        length_ms = (length or _DEFAULT_MEDIA_SECONDS) * 1000
        if r() < 0.35:
            add(Event(cid, uid, "click", t, None, device, {
                "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network,
                "target": CLICK_TARGETS[int(r() * 6)]}))
            seq += 1
            t += int(-8_000 * log(1.0 - r())) + 500
        position = 0
        if r() < 0.2:  # resumes where an earlier session stopped
            position = int(length_ms * r() * 0.6)
        mean_segment = length_ms * 0.35
        for _ in range(6):
            if t >= end:
                return events
            add(Event(cid, uid, "play", t, None, device, {
                "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network,
                "position_ms": position}))
            seq += 1
            segment = int(-mean_segment * log(1.0 - r())) + 1_000
            if position + segment >= length_ms * 0.97:
                segment = max(0, length_ms - position)
                t += segment
                if t < end:
                    add(Event(cid, uid, "finish", t, segment, device, {
                        "app_version": version, "country": country, "session_id": sid, "seq": seq,
                        "network": network, "position_ms": length_ms}))
                    seq += 1
                break
            position += segment
            t += segment
            if t >= end:
                return events
            add(Event(cid, uid, "pause", t, segment, device, {
                "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network,
                "position_ms": position}))
            seq += 1
            if r() >= 0.45:
                break
            t += int(-90_000 * log(1.0 - r())) + 1_000
        if r() < 0.1:
            t += int(-15_000 * log(1.0 - r())) + 300
            if t < end:
                add(Event(cid, uid, "click", t, None, device, {
                    "app_version": version, "country": country, "session_id": sid, "seq": seq, "network": network,
                    "target": CLICK_TARGETS[int(r() * 6)]}))
        return events

    def start_time(self, lo_ms: int, hi_ms: int) -> int:
        """A session start in [lo_ms, hi_ms), denser in the evening (UTC) than at night."""
        r = self._rng.random
        span = hi_ms - lo_ms
        if span <= 1:
            return lo_ms
        while True:
            t = lo_ms + int(r() * span)
            if r() < DIURNAL[(t // _HOUR_MS) % _DAY_HOURS]:
                return t

    def history(
        self,
        count: int,
        since_ms: int,
        until_ms: int,
        *,
        chunk_rows: int = 50_000,
        transform: Callable[[Event], Event] | None = None,
    ) -> Iterator[list[Event]]:
        """Exactly `count` events in [since_ms, until_ms), in chunks of at most `chunk_rows`.

        Chunk k covers the k-th slice of the range, so ids grow with time as
        in a real table; each chunk is sorted by event time. `transform`
        (the anomaly injector) sees every event in generation order, before
        the sort, so its draws do not depend on the chunk layout's sort.
        """
        if count < 0 or chunk_rows < 1:
            raise ValueError("count must be >= 0 and chunk_rows >= 1")
        if until_ms <= since_ms:
            raise ValueError("until must be after since")
        span = until_ms - since_ms
        produced = 0
        while produced < count:
            rows = min(chunk_rows, count - produced)
            lo = since_ms + span * produced // count
            hi = since_ms + span * (produced + rows) // count
            chunk: list[Event] = []
            while len(chunk) < rows:
                chunk.extend(self.session(self.start_time(lo, max(hi, lo + 1)), until_ms))
            del chunk[rows:]
            if transform is not None:
                chunk = [transform(ev) for ev in chunk]
            chunk.sort(key=_EVENT_TS)
            produced += rows
            yield chunk

    def live(
        self,
        clock_ms: Callable[[], int],
        *,
        concurrency: int = 48,
        transform: Callable[[Event], Event] | None = None,
    ) -> Iterator[Event]:
        """An endless stream of events stamped `clock_ms()` at the moment each is taken.

        `concurrency` sessions are open at once and their events interleave,
        as from that many users online; the client-side timestamp is a little
        behind the clock (0-400 ms of network and batching delay). `transform`
        (the anomaly injector) sees each event after it is stamped.
        """
        rng = self._rng
        r = rng.random
        active: list[list[Event]] = []
        while True:
            while len(active) < concurrency:
                active.append(self.session(0)[::-1])
            i = int(r() * len(active))
            pending = active[i]
            ev = pending.pop()
            if not pending:
                active[i] = active[-1]
                active.pop()
            ev = ev._replace(event_ts_ms=clock_ms() - int(r() * 400))
            yield ev if transform is None else transform(ev)


__all__ = [
    "APP_VERSIONS",
    "COUNTRIES",
    "DEVICES",
    "DIURNAL",
    "EVENT_TYPES",
    "Event",
    "EventFactory",
    "ZIPF_S",
    "zipf_weights",
]
