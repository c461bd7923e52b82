"""The rebuild keeps its pause alive while it reads (no Redis needed)."""

from __future__ import annotations

import pytest

from pulse.runtime.rebuild import renewing


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_pause_is_renewed_each_interval_of_a_long_read_and_never_otherwise():
    clock, renewals = FakeClock(), []

    def rows():
        for i in range(10):
            clock.t = i * 0.5  # each row takes half a second
            yield i

    out = list(renewing(rows(), lambda: renewals.append(clock.t), every_s=1.0, clock=clock))
    assert out == list(range(10))
    assert renewals == [1.0, 2.0, 3.0, 4.0]  # every second, measured from the last renewal


def test_a_fast_read_does_not_renew():
    clock, renewals = FakeClock(), []
    assert list(renewing(range(1000), lambda: renewals.append(1), every_s=40.0, clock=clock)) == list(range(1000))
    assert renewals == []


def test_a_failed_renewal_stops_the_read():
    clock = FakeClock()

    def rows():
        for i in range(5):
            clock.t = float(i)
            yield i

    def lost():
        raise RuntimeError("pause lost")

    got = []
    with pytest.raises(RuntimeError, match="pause lost"):
        for row in renewing(rows(), lost, every_s=2.0, clock=clock):
            got.append(row)
    assert got == [0, 1]  # the row that found the renewal due is not handed on
