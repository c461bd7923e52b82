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
    sink = build_sink("memory", Settings(), instance="memory@t/0")
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
        if reg.backfill_default:
            assert cls.snapshot_mode == "rows", name
