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


def string_bytes(arr) -> tuple[np.ndarray, np.ndarray]:
    """(the UTF-8 bytes of an Arrow large_string / large_binary array's values, end to end, as uint8;
    the n + 1 offsets into them, from 0), without a copy (a sliced array's window of its buffers).
    """
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64, len(arr) + 1, arr.offset * 8)
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(bufs[2], np.uint8)[start:end] if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offsets - start


__all__ = ["string_bytes", "unique_ints"]
