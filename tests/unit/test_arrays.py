import numpy as np

from pulse.arrays import unique_ints


def test_unique_ints_matches_a_set():
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 5, 1000):
        values = rng.integers(-50, 50, n)
        got = unique_ints(values)
        assert got.dtype == np.int64
        assert got.tolist() == sorted(set(values.tolist()))


def test_unique_ints_takes_lists_and_wide_values():
    assert unique_ints([2**62, 3, 3, -(2**62)]).tolist() == [-(2**62), 3, 2**62]
