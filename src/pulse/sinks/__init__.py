"""Sinks: one contract (`Sink`), destinations and test doubles, built by name.

A sink's client library is imported only when that sink is built, with an
error naming the extra to install.

`pipeline_sinks` picks what `pulse run` runs: the sinks named (flag,
PULSE_RUNTIME__SINKS, TOML), else every destination whose endpoint the user
configured. A default never discards data: a test double that keeps nothing
(`memory`) is never picked unless named, and with nothing configured the
answer is an error with the fix, not a pipeline that acknowledges the slot
for nothing.
"""

from __future__ import annotations

from pulse.config import Settings, env_name_for
from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.sinks.base import Sink

log = get_logger(__name__)

BUILTIN = ("memory", "pgtable", "redis", "bigquery", "external", "kafka", "jsonl")

# The destinations `pulse run` runs when no sink is named, in this order, and
# the endpoint setting whose presence (set by the user, not a default) enables each.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "redis": ("redis", "url"),
    "bigquery": ("bigquery", "project"),
    "external": ("external", "url"),
    "jsonl": ("jsonl", "path"),
}

# name -> (module, class, pip extra or None); each class has `from_settings(settings)`.
_DESTINATIONS = {
    "redis": ("pulse.sinks.redis", "RedisSink", "redis"),
    "bigquery": ("pulse.sinks.bigquery", "BigQuerySink", "bigquery"),
    "external": ("pulse.sinks.external", "ExternalSink", "external"),
    "kafka": ("pulse.sinks.kafka", "KafkaSink", "kafka"),
    "jsonl": ("pulse.sinks.jsonl", "JsonLinesSink", None),  # core dependencies only
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
                hint=f"pip install 'pulse-cdc[{extra}]'" if extra else "reinstall Pulse (a core dependency is missing)",
            ) from exc
        return getattr(mod, cls).from_settings(settings, name=instance)
    raise ConfigError(f"unknown sink {name!r}", hint=f"choose from: {', '.join(BUILTIN)}")


def configured_destinations(settings: Settings) -> dict[str, str]:
    """Destination -> why it is configured (the variable that set its endpoint), in ENDPOINTS order."""
    out = {}
    for name, (section, key) in ENDPOINTS.items():
        if settings.configured(section, key) and getattr(getattr(settings, section), key) is not None:
            out[name] = f"{section}.{key} is set ({env_name_for(f'{section}.{key}')} or its file/TOML form)"
    return out


def pipeline_sinks(settings: Settings, *, required: bool = True) -> list[str]:
    """The sinks a pipeline runs: runtime.sinks when named, else every configured destination.

    With none named and none configured: ConfigError with the fix (when `required`),
    else an empty list. Logs which sinks and why.
    """
    if settings.runtime.sinks:
        names = list(dict.fromkeys(settings.runtime.sinks))
        log.info("sinks.chosen", sinks=",".join(names), why="named (--sink / runtime.sinks)")
        return names
    found = configured_destinations(settings)
    if not found:
        if not required:
            return []
        envs = ", ".join(env_name_for(f"{s}.{k}") for s, k in ENDPOINTS.values())
        raise ConfigError(
            "no sink named and no destination configured: nothing would keep the events",
            hint=f"set at least one of {envs} (or its _FILE / TOML form), or name a sink: "
                 f"pulse run --sink {'|'.join(ENDPOINTS)}",
        )
    for name, why in found.items():
        log.info("sinks.default", sink=name, why=why)
    skipped = [n for n in ENDPOINTS if n not in found]
    log.info("sinks.chosen", sinks=",".join(found), why="no sink named: every configured destination",
             not_configured=",".join(skipped) or "-")
    return list(found)


__all__ = ["BUILTIN", "ENDPOINTS", "Sink", "build_sink", "configured_destinations", "pipeline_sinks"]
