import numpy as np
import pyarrow as pa

from pulse.arrays import string_bytes, unique_ints


def test_unique_ints_matches_a_set():
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 5, 1000):
        values = rng.integers(-50, 50, n)
        got = unique_ints(values)
        assert got.dtype == np.int64
        assert got.tolist() == sorted(set(values.tolist()))


def test_unique_ints_takes_lists_and_wide_values():
    assert unique_ints([2**62, 3, 3, -(2**62)]).tolist() == [-(2**62), 3, 2**62]


def test_string_bytes_are_each_value_end_to_end_also_for_slices_nulls_and_empties():
    values = ["a", None, "", "é🎧", "xyz", None, "last"]
    arr = pa.array(values, pa.large_string())
    for start in range(len(values)):
        for stop in range(start, len(values) + 1):
            part = arr.slice(start, stop - start)
            data, offsets = string_bytes(part)
            assert data.dtype == np.uint8 and offsets[0] == 0 and len(offsets) == stop - start + 1
            got = [data[a:b].tobytes().decode() for a, b in zip(offsets[:-1], offsets[1:])]
            assert got == [v or "" for v in values[start:stop]]
    data, offsets = string_bytes(pa.array([None, None], pa.large_string()))
    assert len(data) == 0 and offsets.tolist() == [0, 0, 0]
