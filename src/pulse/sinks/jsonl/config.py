"""The JSON-lines sink's settings (`[jsonl]`, `PULSE_JSONL__*`)."""

from __future__ import annotations

from pydantic import Field

from pulse.config_base import Section


class JsonlConfig(Section):
    """The JSON-lines file sink (`--sink jsonl`; docs/writing-a-sink.md)."""

    path: str | None = Field(default=None, description="Folder of the segment files (one JSON line per event); "
                                                        "setting it enables the sink when no sink is named.")
    segment_bytes: int = Field(default=256 * 1024 * 1024, ge=1024,
                               description="A new segment file starts once the current one holds this many bytes.")


__all__ = ["JsonlConfig"]
