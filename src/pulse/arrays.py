"""Array helpers shared by the sinks and the verifier."""

from __future__ import annotations

import numpy as np


def unique_ints(values) -> np.ndarray:
    """The distinct values of an integer array, sorted, as int64: a sort and a mask.

    Not `np.unique`: numpy 2.4 answers it with a hash table that took 0.8 s
    on a million event ids here, against 11 ms for a sort (the loader called
    it on every load group; bench/bench_snapshot.py's profile showed it as the
    loader's largest cost).
    """
    a = np.sort(np.asarray(values, dtype=np.int64))
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


__all__ = ["unique_ints"]
