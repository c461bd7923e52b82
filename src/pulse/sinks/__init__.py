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

import importlib
from typing import TYPE_CHECKING, NamedTuple

from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.sinks.base import Sink, SinkInstance

if TYPE_CHECKING:  # pragma: no cover
    from pulse.config import Settings  # pulse.config imports the sinks' config sections: not at import time

log = get_logger(__name__)

class Registration(NamedTuple):
    """One sink kind: where its class is, the pip extra its client needs, and the endpoint setting
    (section, key) whose presence, set by the user, makes `pulse run` run it when no sink is named."""

    module: str
    cls: str  # a `Sink` subclass with `from_settings(settings, name=...)`
    extra: str | None = None  # None: core dependencies only
    endpoint: tuple[str, str] | None = None  # None: runs only when named
    backfill_default: bool = False  # a target of `pulse backfill` when none is named
    window: bool = False  # keeps only a recent window: a backfill rebuilds it (`Sink.rebuild_window`)
    relays: bool = False  # forwards to workers of the other sinks (`Sink.relays`): `--kafka` modes use it


# Every sink kind, one row each. Endpoints are tried in this order when no sink is named.
REGISTRY: dict[str, Registration] = {
    "redis": Registration("pulse.sinks.redis.sink", "RedisSink", "redis", ("redis", "url"), window=True),
    "bigquery": Registration("pulse.sinks.bigquery.sink", "BigQuerySink", "bigquery", ("bigquery", "project"),
                             backfill_default=True),
    "external": Registration("pulse.sinks.external.sink", "ExternalSink", "external", ("external", "url"),
                             backfill_default=True),
    "jsonl": Registration("pulse.sinks.jsonl.sink", "JsonLinesSink", None, ("jsonl", "path")),
    "kafka": Registration("pulse.sinks.kafka.sink", "KafkaSink", "kafka", relays=True),
    # Test doubles: never a default (memory keeps nothing; pgtable writes into a database of the tests).
    "memory": Registration("pulse.sinks.memory", "MemorySink"),
    "pgtable": Registration("pulse.sinks.pgtable", "PgTableSink"),
}

BUILTIN = tuple(REGISTRY)

# The destinations `pulse run` runs when no sink is named, in this order, and
# the endpoint setting whose presence (set by the user, not a default) enables each.
ENDPOINTS: dict[str, tuple[str, str]] = {name: r.endpoint for name, r in REGISTRY.items() if r.endpoint}
# What `pulse backfill` targets when no sink is named.
DEFAULT_BACKFILL_TARGETS = tuple(name for name, r in REGISTRY.items() if r.backfill_default)


def relay_sink() -> str:
    """The sink kind that relays to separate workers (Kafka): what `pulse backfill --kafka` runs."""
    return next(name for name, r in REGISTRY.items() if r.relays)


def rebuilt_not_replayed(name: str) -> bool:
    """Whether a backfill for sink kind `name` rebuilds its window instead of replaying rows."""
    reg = REGISTRY.get(name)
    return reg is not None and reg.window


# The sink whose dead letters `pulse dlq` manages when none is named: the external system's refusals.
DLQ_DEFAULT = "external"


def sink_class(name: str) -> type[Sink]:
    """The class of sink kind `name` (its module imported), with the same errors as `build_sink`."""
    reg = REGISTRY.get(name)
    if reg is None:
        raise ConfigError(f"unknown sink {name!r}", hint=f"choose from: {', '.join(BUILTIN)}")
    try:
        mod = importlib.import_module(reg.module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("pulse."):
            raise ConfigError(f"the {name} sink is not available in this build", hint="upgrade Pulse") from exc
        raise ConfigError(
            f"the {name} sink needs {exc.name}, which is not installed",
            hint=f"pip install 'pulse-cdc[{reg.extra}]'" if reg.extra else "reinstall Pulse (a core dependency is missing)",
        ) from exc
    return getattr(mod, reg.cls)


def dead_letters(settings: Settings, sink_name: str, **options: object):
    """`pulse dlq`'s access to the dead letters of sink instance `sink_name` (`<kind>` or `<kind>@<topic>/<p>`).

    A name the registry does not know (an instance named in a test or by hand) gets Pulse's dead-letter
    table, which it can list, show and purge but not replay.
    """
    kind = SinkInstance.of(sink_name).kind
    if kind in REGISTRY:
        return sink_class(kind).dead_letters(settings, sink_name, **options)
    from pulse.sinks.dead_letter import StoreAccess

    return StoreAccess(settings, sink_name)


def build_sink(name: str, settings: Settings, instance: "SinkInstance | str | None" = None) -> Sink:
    """The sink of kind `name`, configured from `settings`.

    `instance` says which one when several run side by side (one per Kafka
    partition, `SinkInstance(kind, topic, partition)`): each keeps its own
    position and local state. None: `pulse run`'s one instance.
    """
    return sink_class(name).from_settings(settings, name=instance or name)


def configured_destinations(settings: Settings) -> dict[str, str]:
    """Destination -> why it is configured (the variable that set its endpoint), in ENDPOINTS order."""
    from pulse.config import env_name_for

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
    from pulse.config import env_name_for

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


__all__ = ["SinkInstance", "BUILTIN", "DLQ_DEFAULT", "dead_letters", "sink_class", "DEFAULT_BACKFILL_TARGETS", "ENDPOINTS", "REGISTRY", "Registration", "Sink", "build_sink", "configured_destinations", "pipeline_sinks",
           "rebuilt_not_replayed", "relay_sink"]
