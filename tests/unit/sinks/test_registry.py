"""Every sink kind is one registry row: a Sink class with `from_settings`, built by name alone."""

import importlib

import pytest

from pulse.config import Settings
from pulse.errors import ConfigError
from pulse.sinks import ENDPOINTS, REGISTRY, build_sink
from pulse.sinks.base import Sink


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_row_names_a_sink_class_with_from_settings(name):
    reg = REGISTRY[name]
    cls = getattr(importlib.import_module(reg.module), reg.cls)
    assert issubclass(cls, Sink)
    assert callable(getattr(cls, "from_settings", None))


def test_memory_by_name_keeps_nothing_and_is_never_a_default():
    sink = build_sink("memory", Settings(), instance="memory@t/0")  # a name, as stored, is taken too
    assert sink.name == "memory@t/0" and sink.keep is False
    assert "memory" not in ENDPOINTS and "pgtable" not in ENDPOINTS


def test_pgtable_without_its_url_says_how_to_set_it():
    with pytest.raises(ConfigError) as err:
        build_sink("pgtable", Settings())
    assert "PULSE_TESTSINKS__PGTABLE_URL" in err.value.hint


def test_an_unknown_kind_lists_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        build_sink("clickhouse", Settings())
    assert all(name in err.value.hint for name in REGISTRY)


def test_declarations_in_the_registry_agree_with_the_classes():
    """A row's `window` is what its class's snapshot_mode says; a default backfill target takes rows."""
    for name, reg in REGISTRY.items():
        cls = getattr(importlib.import_module(reg.module), reg.cls)
        assert reg.window == (cls.snapshot_mode == "window"), name
        assert reg.relays == cls.relays, name
        if reg.backfill_default:
            assert cls.snapshot_mode == "rows", name


def test_an_instance_names_itself_as_stored_positions_expect_and_parses_back():
    from pulse.sinks import SinkInstance

    part = SinkInstance("bigquery", "pulse.events", 3)
    assert part.name == "bigquery@pulse.events/3" and part.partitioned
    assert SinkInstance.of(part.name) == part and SinkInstance.of(part) is part
    assert SinkInstance.of("redis") == SinkInstance("redis") and not SinkInstance("redis").partitioned
    assert SinkInstance.of("external@a/b.c/12") == SinkInstance("external", "a/b.c", 12)


def test_build_sink_hands_the_instance_to_the_sink():
    from pulse.sinks import SinkInstance

    sink = build_sink("memory", Settings(), instance=SinkInstance("memory", "t", 2))
    assert sink.instance == SinkInstance("memory", "t", 2) and sink.name == "memory@t/2"


def test_a_sink_that_says_it_replays_dead_letters_has_a_replay():
    from pulse.sinks import sink_class
    from pulse.sinks.base import Sink as Base

    replaying = {name for name in REGISTRY if sink_class(name).replays_dead_letters}
    assert replaying == {"bigquery", "kafka"}
    for name in replaying:
        assert sink_class(name).replay_dead_letters.__func__ is not Base.replay_dead_letters.__func__
    # The external sink keeps its refusals with its outbox: its own access, not the shared table's.
    assert sink_class("external").dead_letters.__func__ is not Base.dead_letters.__func__
