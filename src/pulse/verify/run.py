"""Verify each chosen destination; with `repair`, fix and verify again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pulse.config import Settings
from pulse.verify.report import Result


@dataclass(frozen=True)
class Options:
    since: datetime | None = None
    until: datetime | None = None
    bucket_s: int = 86_400
    fanout: int = 16
    leaf_rows: int = 256
    settle_s: float = 30.0


# The destinations `pulse verify` knows how to compare with the source.
VERIFIABLE = ("bigquery", "redis", "external")


def verify_one(settings: Settings, name: str, opts: Options) -> Result:
    if name == "bigquery":
        from pulse.verify.bigquery import verify_bigquery

        return verify_bigquery(settings, since=opts.since, until=opts.until, bucket_s=opts.bucket_s,
                               fanout=opts.fanout, leaf_rows=opts.leaf_rows, settle_s=opts.settle_s)
    if name == "redis":
        from pulse.verify.redis import verify_redis

        return verify_redis(settings, settle_s=opts.settle_s)
    if name == "external":
        from pulse.verify.external import verify_external

        return verify_external(settings, since=opts.since, until=opts.until, settle_s=opts.settle_s)
    raise ValueError(name)


def run_verify(settings: Settings, names: list[str], opts: Options, repair: bool = False) -> list[Result]:
    results = [verify_one(settings, n, opts) for n in names]
    if not repair:
        return results
    out = []
    for r in results:
        if r.ok:
            out.append(r)
            continue
        from pulse.verify import repair as R

        if r.sink == "bigquery":
            done = R.repair_bigquery(settings, r)
        elif r.sink == "external":
            done = R.repair_external(settings, r)
        else:
            done = R.repair_redis(settings)
        again = verify_one(settings, r.sink, opts)
        again.repair = {**done, "findings_before": len(r.findings)}
        out.append(again)
    return out
