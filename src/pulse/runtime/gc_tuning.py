"""Garbage-collector thresholds for Pulse's processes."""

from __future__ import annotations

import gc

# The collector's thresholds, raised from CPython's (700, 10, 10): the hot
# path allocates several objects per event, nearly all freed by reference
# counting, and with the default a young collection runs about every hundred
# events, and the older ones walk every event still queued. Raised, the row
# path of bench/bench_core.py went from 0.72-0.91x to 1.0-1.26x the raw
# walsender rate. Cyclic garbage is still collected, in larger rounds.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Apply GC_THRESHOLDS (the CLI does it for every command; embedders may)."""
    gc.set_threshold(*GC_THRESHOLDS)
