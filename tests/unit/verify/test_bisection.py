"""The bisection walk on an in-memory side (numpy): how many queries name a differing row among 1,000,000."""

from __future__ import annotations

import numpy as np

from pulse.verify.bigquery import Agg, Bisection, Scope


class ArraySide:
    """A side whose rows are arrays: id, bucket, h1, h2; `rows` returns the row's 'fields' as (h1, h2)."""

    def __init__(self, ids, buckets, h1, h2) -> None:
        self.ids, self.buckets, self.h1, self.h2 = ids, buckets, h1, h2
        self.queries = 0

    def _mask(self, scope: Scope, ids=None):
        m = np.ones(len(self.ids), bool)
        if scope.bucket is not None:
            m &= self.buckets == scope.bucket
        if scope.lo is not None:
            m &= (self.ids >= scope.lo) & (self.ids <= scope.hi)
        if ids is not None:
            m &= np.isin(self.ids, ids)
        return m

    def aggregate(self, scope: Scope, step):
        self.queries += 1
        m = self._mask(scope)
        g = self.buckets[m] if step is None else (self.ids[m] - scope.lo) // step
        out = {}
        for key in np.unique(g):
            k = g == key
            ids = self.ids[m][k]
            out[int(key)] = Agg(int(k.sum()), int(self.h1[m][k].sum()), int(self.h2[m][k].sum()),
                                int(ids.min()), int(ids.max()))
        return out

    def rows(self, scope: Scope, ids=None):
        self.queries += 1
        m = self._mask(scope, ids)
        return {int(i): [(str(a), str(b))] for i, a, b in zip(self.ids[m], self.h1[m], self.h2[m])}


def _sides(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    buckets = np.zeros(n, dtype=np.int64)  # one day: one bucket
    h1 = rng.integers(0, 2**32, n, dtype=np.int64)
    h2 = rng.integers(0, 2**32, n, dtype=np.int64)
    return ids, buckets, h1, h2


def test_one_differing_row_among_a_million_is_named_in_a_logarithmic_number_of_queries():
    ids, buckets, h1, h2 = _sides(1_000_000)
    d1 = h1.copy()
    d1[654_321] ^= 1  # event id 654,322 differs
    src, dst = ArraySide(ids, buckets, h1, h2), ArraySide(ids, buckets, d1, h2)
    walk = Bisection(src, dst, fanout=16, leaf_rows=256)
    found = walk.run()
    assert [(f.kind, f.key) for f in found] == [("different", "654322")]
    # 1 bucket query + ceil(log16(1e6 / 256)) = 3 splits + 1 leaf fetch, on each side
    assert src.queries + dst.queries == 2 * (1 + 3 + 1)


def test_equal_sides_cost_one_query_each_and_a_missing_and_an_extra_row_are_named():
    ids, buckets, h1, h2 = _sides(100_000, seed=2)
    src = ArraySide(ids, buckets, h1, h2)
    dst = ArraySide(ids, buckets, h1, h2)
    walk = Bisection(src, dst)
    assert walk.run() == [] and src.queries + dst.queries == 2
    keep = ids != 500
    extra_ids = np.append(ids[keep], 100_001)
    dst = ArraySide(extra_ids, np.zeros(len(extra_ids), np.int64), np.append(h1[keep], 7), np.append(h2[keep], 7))
    src = ArraySide(ids, buckets, h1, h2)
    found = Bisection(src, dst).run()
    assert [(f.kind, f.key) for f in found] == [("missing", "500"), ("extra", "100001")]
