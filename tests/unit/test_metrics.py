"""observe_many: the same histogram as that many single observations."""

from prometheus_client import CollectorRegistry, Histogram

from pulse.metrics import observe_many


def _samples(hist: Histogram) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in hist.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_observe_many_equals_repeated_observe() -> None:
    one = Histogram("a", "a", buckets=(0.1, 1, 10), registry=CollectorRegistry())
    many = Histogram("a", "a", buckets=(0.1, 1, 10), registry=CollectorRegistry())
    for value, count in ((0.05, 3), (0.5, 7), (5.0, 2), (50.0, 4), (1.0, 1)):
        for _ in range(count):
            one.observe(value)
        observe_many(many, value, count)
    assert _samples(one) == _samples(many)
