"""`pulse top` renders source strings literally: Rich markup in a title or device name is text, not style."""

from __future__ import annotations

import io

from rich.console import Console

from pulse.cli.top import render
from pulse.sinks.redis.board import Keys

HOSTILE = ["[/]", "[bold red]x", "[link=http://evil]y[/link]", "a\x1b[31mb"]


def _snap() -> dict:
    rows = [{"content_id": f"c{i}", "title": t, "content_type": "video", "seconds": 1.0, "events": 1}
            for i, t in enumerate(HOSTILE)]
    return {"top": rows, "members": len(rows), "by_type": {"video": rows, "podcast": [], "newsletter": []},
            "devices": [(t, 1) for t in HOSTILE], "event_types": [("[/]", 2)], "freshness_s": 1.0,
            "last_write_s": 1.0, "complete": True, "complete_from": None, "position": None, "stats": {}}


def test_markup_in_source_strings_is_printed_as_typed() -> None:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(render(_snap(), Keys("p:", 600)))
    text = out.getvalue()
    assert text.count("[/]") >= 3  # a title, a device, an event type
    assert "[bold red]x" in text
    assert "[link=http://evil]y[/link]" in text
    assert "\x1b" not in text and "a\\x1b[31mb" in text  # a control character is escaped, not sent to the terminal
