"""The CLI raises the collector's thresholds before any command runs."""

import gc

from pulse.runtime.gc_tuning import GC_THRESHOLDS, tune_gc


def test_tune_gc_sets_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
