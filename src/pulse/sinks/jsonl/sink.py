"""A JSON-lines file sink: every event as one line of JSON in segment files of a folder.

The worked example of docs/writing-a-sink.md, and a useful destination of its
own (a file another tool tails, an audit trail, a quick look at the stream).

- **What it writes**: one line per event, the event's contract form
  (`EnrichedEvent.to_dict`, the same fields as the HTTP `data` and the Kafka
  value, with `before` when the replica identity sent old values), in
  position order, into `events-<lsn>-<seq>.jsonl` files of `jsonl.path`; a new
  segment starts once the current one passes `jsonl.segment_bytes`.
- **Its position is its data**: the last complete line names the highest
  event written (`source_lsn`, `source_seq`). A batch is durable once its
  lines are written and fsync'd; `open` reads the position back from the
  newest segment and cuts a line torn by a crash. No second file can
  disagree with the data.
- **Replays change nothing**: events at or below the position are skipped,
  so a batch retried after a failure, or sent again after a restart, is
  written once.
- **Failures**: an `OSError` (disk full, a folder gone) is transient: the
  runtime retries the batch with backoff, and the slot waits.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from pulse.bus.codec import to_dict
from pulse.errors import TransientError
from pulse.fsutil import fsync_dir, truncate_durably
from pulse.model import ZERO, Batch, Position
from pulse.sinks.base import Sink, SinkInstance


def segment_name(position: Position) -> str:
    # Zero-padded so that the names sort in position order.
    return f"events-{position.lsn:020d}-{position.seq:010d}.jsonl"


class JsonLinesSink(Sink):
    def __init__(self, path: str | os.PathLike[str], segment_bytes: int = 256 * 1024 * 1024,
                 name: "str | SinkInstance" = "jsonl") -> None:
        self.dir = Path(path)
        self.segment_bytes = segment_bytes
        self.identify(name)
        self.position = ZERO
        self.current: Path | None = None

    @classmethod
    def from_settings(cls, settings, name: "str | SinkInstance" = "jsonl") -> "JsonLinesSink":
        cfg = settings.jsonl
        # One folder per instance when several run side by side (Kafka partitions).
        instance = SinkInstance.of(name)
        path = Path(cfg.path) / instance.name.replace("/", "_") if instance.partitioned else Path(cfg.path)
        return cls(path, segment_bytes=cfg.segment_bytes, name=name)

    def open(self) -> Position:
        self.position = ZERO
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            segments = sorted(self.dir.glob("events-*.jsonl"))
            for segment in reversed(segments):  # the newest may be empty (a crash right after creating it)
                found = self._last_position(segment)
                if found is not None:
                    self.position = found
                    break
        except OSError as exc:
            raise TransientError(f"jsonl folder {self.dir} unusable: {exc}") from exc
        self.current = segments[-1] if segments else None
        return self.position

    @staticmethod
    def _last_position(segment: Path) -> Position | None:
        """The position of the last complete line (None: no line); a torn last line is cut off."""
        with open(segment, "rb+") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                truncate_durably(fh, end)
        if end == 0:
            return None
        last = orjson.loads(data[data.rfind(b"\n", 0, end - 1) + 1:end])
        return Position(last["source_lsn"], last["source_seq"])

    def write(self, batch: Batch) -> Position:
        events = [e for e in batch.events if e.position > self.position]
        if not events:
            return self.position
        lines = b"".join(orjson.dumps(to_dict(e)) + b"\n" for e in events)
        try:
            new = self.current is None or self.current.stat().st_size >= self.segment_bytes
            if new:
                self.current = self.dir / segment_name(events[0].position)
            with open(self.current, "ab", buffering=0) as fh:
                size = fh.tell()
                try:
                    view = memoryview(lines)
                    while view:
                        view = view[fh.write(view):]
                    os.fsync(fh.fileno())
                except OSError:
                    fh.truncate(size)  # no half batch before the retry's copy
                    raise
            if new:  # the new file's name must survive a crash too
                fsync_dir(self.dir)
        except OSError as exc:
            raise TransientError(f"jsonl write to {self.current} failed: {exc}") from exc
        self.position = events[-1].position
        return self.position

    def status(self) -> dict[str, object]:
        return {"path": str(self.dir), "segment": self.current.name if self.current else None}
