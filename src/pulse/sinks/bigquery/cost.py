"""What keeps the BigQuery sink's bill and quotas flat as the table grows (docs/sinks/bigquery.md, "Cost model").

- `IdMark`: the high-water mark of event ids and the ranges below it known
  to be absent. Invariant: *no row of the table has an event_id above
  `mark` or inside an `absent` range.* A group whose ids all lie there is
  fresh without reading the table. The loader (the table's single writer)
  keeps the invariant by writing the mark *before* it loads (a claim in the
  state row) or in the MERGE's own transaction: the mark is only ever at or
  above what the table holds, and a range leaves `absent` before any of its
  ids can be loaded.
- `next_load_at`: the load-job budget per table, in any 24 hours. A fifth
  of it may be spent at once; the rest accrues evenly over the day, so a
  loader that goes faster than the budget allows sees its interval widen,
  and no 24 hours hold more jobs than the budget.
- `job_labels`: the labels every job carries, for cost attribution.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np

from pulse.arrays import unique_ints

#: Most absent ranges kept in the state row (about 25 bytes each); past it the narrowest,
#: then the oldest, are forgotten (their ids then take the checked path: slower, still exact).
MAX_ABSENT_RANGES = 1000
#: Share of the day's budget that may be spent at once (a backfill's burst, a restart's catch-up).
BURST = 0.2
DAY_S = 86_400


def _ranges(values: list[list[int]] | None) -> tuple[tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in (values or ()))


@dataclass(frozen=True)
class IdMark:
    """No event_id above `mark`, nor in any `absent` range (sorted, disjoint, below the mark), is in the table."""

    mark: int
    absent: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, mark: int | None, absent: str | None) -> "IdMark | None":
        if mark is None:
            return None
        return cls(int(mark), _ranges(json.loads(absent)) if absent else ())

    def fresh(self, ids: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `ids` are certainly not in the table."""
        ids = np.asarray(ids, dtype=np.int64)
        out = ids > self.mark
        if self.absent:
            lows = np.fromiter((lo for lo, _ in self.absent), np.int64, len(self.absent))
            highs = np.fromiter((hi for _, hi in self.absent), np.int64, len(self.absent))
            i = np.searchsorted(lows, ids, side="right") - 1
            inside = (i >= 0) & (ids <= highs[np.maximum(i, 0)])
            out |= inside
        return out

    def after(self, ids: np.ndarray, keep: int = MAX_ABSENT_RANGES) -> "IdMark":
        """The mark once `ids` may be in the table: raised to their highest, the ids taken out of `absent`,
        the ids skipped between the old and the new mark added to it (a transaction still open, or rolled back)."""
        ids = unique_ints(ids)
        if len(ids) == 0:
            return self
        top = max(self.mark, int(ids[-1]))
        spans = list(self.absent)
        if top > self.mark:
            spans.append((self.mark + 1, top))
        out: list[tuple[int, int]] = []
        for lo, hi in spans:
            a, b = np.searchsorted(ids, lo, side="left"), np.searchsorted(ids, hi, side="right")
            bounds = np.concatenate(([lo - 1], ids[a:b], [hi + 1]))
            starts, ends = bounds[:-1] + 1, bounds[1:] - 1
            keep_gap = starts <= ends
            out.extend(zip(starts[keep_gap].tolist(), ends[keep_gap].tolist()))
        if len(out) > keep:
            # Forget the narrowest first, then the lowest (a straggler's id is just below the mark).
            out = sorted(out, key=lambda r: (r[1] - r[0], r[1]), reverse=True)[:keep]
        return IdMark(top, tuple(sorted(out)))


def pacing(budget: int) -> tuple[float, int]:
    """(seconds between jobs once the burst is spent, jobs allowed at once) for `budget` jobs in any 24 hours.

    A generic cell rate algorithm: a job may start at t when t >= TAT - (burst - 1) * interval, and
    moves TAT (the state row's `jobs_tat`) to max(TAT, t) + interval. In any window of a day that
    allows at most burst + day / interval = budget jobs: rolling, not only per calendar day.
    """
    if budget <= 1:
        return DAY_S + 1.0, 1
    burst = max(1, min(budget - 1, round(BURST * budget)))
    return DAY_S / (budget - burst), burst


def next_load_at(tat: float | None, budget: int, now: float) -> float:
    """When the next job that writes the table may start (epoch seconds), the budget's clock being `tat`."""
    if tat is None:
        return now
    interval, burst = pacing(budget)
    return max(now, tat - (burst - 1) * interval)


def utc_day(now: float) -> date:
    return datetime.fromtimestamp(now, timezone.utc).date()


_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def label(value: str | None) -> str:
    """A BigQuery label value: lower case letters, digits, '_' and '-', at most 63 characters."""
    return _LABEL_BAD.sub("_", (value or "none").lower())[:63] or "none"


def job_labels(slot: str | None, path: str) -> dict[str, str]:
    return {"pulse_slot": label(slot), "pulse_path": label(path)}


__all__ = ["BURST", "IdMark", "MAX_ABSENT_RANGES", "job_labels", "label", "next_load_at", "pacing", "utc_day"]
