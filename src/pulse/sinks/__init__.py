"""Sinks: one contract (`Sink`), destinations and test doubles, built by name.

A sink's client library is imported only when that sink is built, with an
error naming the extra to install.
"""

from __future__ import annotations

from pulse.config import Settings
from pulse.errors import ConfigError
from pulse.sinks.base import Sink

BUILTIN = ("memory", "pgtable", "redis", "bigquery", "external", "kafka")

# name -> (module, class, pip extra); each class has `from_settings(settings)`.
_DESTINATIONS = {
    "redis": ("pulse.sinks.redis", "RedisSink", "redis"),
    "bigquery": ("pulse.sinks.bigquery", "BigQuerySink", "bigquery"),
    "external": ("pulse.sinks.external", "ExternalSink", "external"),
    "kafka": ("pulse.sinks.kafka", "KafkaSink", "kafka"),
}


def build_sink(name: str, settings: Settings, instance: str | None = None) -> Sink:
    """The sink of kind `name`, configured from `settings`.

    `instance` names this instance when several run side by side (one per
    Kafka partition): sinks store their position under their instance name.
    """
    instance = instance or name
    if name == "memory":
        from pulse.sinks.memory import MemorySink

        return MemorySink(instance, keep=False)
    if name == "pgtable":
        from pulse.sinks.pgtable import PgTableSink

        url = settings.testsinks.pgtable_url
        if url is None:
            raise ConfigError("the pgtable sink needs a database URL",
                              hint="set PULSE_TESTSINKS__PGTABLE_URL (a database other than the source)")
        return PgTableSink(url.get_secret_value(), table=settings.testsinks.pgtable_table, name=instance)
    if name in _DESTINATIONS:
        import importlib

        module, cls, extra = _DESTINATIONS[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("pulse."):
                raise ConfigError(f"the {name} sink is not available in this build", hint="upgrade Pulse") from exc
            raise ConfigError(
                f"the {name} sink needs {exc.name}, which is not installed",
                hint=f"pip install 'pulse-cdc[{extra}]'",
            ) from exc
        return getattr(mod, cls).from_settings(settings, name=instance)
    raise ConfigError(f"unknown sink {name!r}", hint=f"choose from: {', '.join(BUILTIN)}")


__all__ = ["BUILTIN", "Sink", "build_sink"]
