"""The external accounting's pure parts: the precedence of the kinds, and which outbox verify reads."""

from __future__ import annotations

import numpy as np
import pytest

from pulse.config import Settings
from pulse.errors import ConfigError
from pulse.verify.external import outbox_of, split


def test_each_id_gets_the_first_kind_that_holds_dead_delivered_pending_unaccountable_missing():
    ids = np.arange(1, 7, dtype=np.int64)
    f, t = False, True
    parts = split(ids,
                  dead=np.array([t, f, f, f, f, f]),
                  delivered=np.array([t, t, f, f, f, f]),
                  pending=np.array([t, t, t, f, f, f]),
                  unaccountable=np.array([t, t, t, t, t, f]))
    assert {k: v.tolist() for k, v in parts.items()} == {
        "dead": [1], "delivered": [2], "pending": [3], "unaccountable": [4, 5], "missing": [6]}
    # Without a retention cut, an id in none of them is missing.
    none = np.zeros(6, bool)
    assert split(ids, none, none, none)["missing"].tolist() == ids.tolist()


def test_an_explicit_outbox_is_read_as_configured():
    for kind in ("local", "postgres", "kafka"):
        assert outbox_of(Settings(external={"url": "http://x", "outbox": kind})) == kind


def test_auto_without_a_local_outbox_folder_refuses_instead_of_calling_everything_missing(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        outbox_of(Settings(external={"url": "http://x", "outbox_dir": str(missing)}))
    assert "PULSE_EXTERNAL__OUTBOX=kafka" in (err.value.hint or "")
    missing.mkdir()
    assert outbox_of(Settings(external={"url": "http://x", "outbox_dir": str(missing)})) == "local"


def test_a_records_event_id_is_read_off_its_head_and_any_other_layout_falls_back_to_json():
    import orjson

    from pulse.verify.external_kafka import event_id

    assert event_id(b'{"event_id":123,"content_id":"c"}') == 123
    assert event_id(orjson.dumps({"content_id": "c", "event_id": 7})) == 7  # not leading: parsed
    assert event_id(b'{"event_id":5}') == 5
    assert event_id(b'{"event_id":-4,"x":1}') == -4
    assert event_id(b'{"event_id":"x","a":1}') is None
    assert event_id(b"") is None and event_id(None) is None and event_id(b"not json") is None
