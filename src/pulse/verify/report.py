"""What `pulse verify` found: findings, a result per destination, the rich table and the JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MISSING = "missing"      # in the source, not in the destination
EXTRA = "extra"          # in the destination, not in the source (deleted there)
DIFFERENT = "different"  # in both, some columns differ
DUPLICATE = "duplicate"  # more than one destination row for one source row
KINDS = (MISSING, EXTRA, DIFFERENT, DUPLICATE)


@dataclass(frozen=True)
class Finding:
    kind: str
    key: str                      # the event id (BigQuery) or the board member (Redis)
    columns: tuple[str, ...] = ()  # for `different`: which columns
    detail: str = ""              # for Redis: the key and the two values

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = list(self.columns)
        return d


@dataclass
class Result:
    """One destination's verification."""

    sink: str
    rows_source: int = 0
    rows_destination: int = 0
    buckets: int = 0
    queries: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    settled: int = 0              # differences seen once that disappeared when the sink caught up
    notes: list[str] = field(default_factory=list)
    repair: dict[str, Any] | None = None
    unit: str = "buckets"         # what `buckets` counts: time buckets (BigQuery) or boards (Redis)
    # The external system: outbox, delivered / pending / dead-lettered / missing / unaccountable, oldest pending.
    accounting: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def first(self, n: int = 5) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.findings:
            ids = out.setdefault(f.kind, [])
            if len(ids) < n:
                ids.append(f.key + (f"({','.join(f.columns)})" if f.columns else ""))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "sink": self.sink, "ok": self.ok, "rows_source": self.rows_source,
            "rows_destination": self.rows_destination, self.unit: self.buckets, "queries": self.queries,
            "seconds": round(self.seconds, 3), "findings_by_kind": self.by_kind(), "settled": self.settled,
            "findings": [f.as_dict() for f in self.findings], "notes": self.notes, "repair": self.repair,
            **({"accounting": self.accounting} if self.accounting is not None else {}),
        }


def render(results: list[Result], console) -> None:
    """One rich table per destination."""
    from rich.markup import escape
    from rich.table import Table

    for r in results:
        title = f"{r.sink}: " + ("[green]equal[/green]" if r.ok else "[red]differs[/red]")
        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column("what", style="bold")
        t.add_column("value")
        t.add_row("rows (source / destination)", f"{r.rows_source:,} / {r.rows_destination:,}")
        t.add_row(r.unit, f"{r.buckets:,}")
        t.add_row("queries", f"{r.queries:,}")
        t.add_row("seconds", f"{r.seconds:.2f}")
        kinds = r.by_kind()
        t.add_row("findings", ", ".join(f"{k}: {n:,}" for k, n in kinds.items()) or "none")
        for kind, ids in r.first().items():
            t.add_row(f"  first {kind}", escape(" ".join(ids)))
        if r.settled:
            t.add_row("settled", f"{r.settled:,} (changed while verifying; equal once the sink caught up)")
        for note in r.notes:
            t.add_row("note", escape(note))
        if r.repair is not None:
            t.add_row("repair", escape(", ".join(f"{k}: {v}" for k, v in r.repair.items())))
        console.print(t)
