"""The workload generator behind `pulse generate`.

It plays the product database's application: it seeds the `content`
catalogue when it is empty, then writes `engagement_events` shaped like real
telemetry (Zipf-like popularity, user sessions of play / pause / finish /
click, a device mix, small JSON payloads, a bounded user pool), either live
(a steady rate, small transactions, timestamps of now) or as history (COPY
in chunks over a time range). With `--anomalies` it also writes the odd rows
real clients send, and UPDATEs and DELETEs of past events, each declared.
With `--seed` every row is reproducible.

Modules, by role:

- `content`: building and seeding the catalogue.
- `events`: the pure event model and session shapes (no I/O).
- `anomalies`: the anomaly kinds and their injector.
- `writer`: COPY bulk load and live INSERT paths.
- `runner`: one run end to end, returning a `Summary`.
"""

from pulse.generator.runner import GenerateSpec, Summary, run

__all__ = ["GenerateSpec", "Summary", "run"]
