"""Shared CLI state: the config file, the flag overrides, settings loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse.config import Settings, load_settings
from pulse.log import configure_logging, register_secret, register_url_secrets


@dataclass
class CliState:
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


STATE = CliState()


def configure_early_logging(level: str, fmt: str) -> None:
    configure_logging(level, fmt)


def settings(**sections: dict[str, Any]) -> Settings:
    """Load settings with the global overrides plus a verb's own flags (None = unset)."""
    merged: dict[str, Any] = {k: dict(v) for k, v in STATE.overrides.items()}
    for section, values in sections.items():
        kept = {k: v for k, v in values.items() if v is not None}
        if kept:
            merged.setdefault(section, {}).update(kept)
    cfg = load_settings(STATE.config_file, merged)
    register_secrets(cfg)
    configure_logging(cfg.log.level, cfg.log.format)
    return cfg


def register_secrets(cfg: Settings) -> None:
    """Make every configured secret hidden wherever it may later be printed (logs, errors, tracebacks)."""
    register_url_secrets(cfg.database.dsn())
    register_url_secrets(cfg.redis.url.get_secret_value())
    if cfg.testsinks.pgtable_url is not None:
        register_url_secrets(cfg.testsinks.pgtable_url.get_secret_value())
    if cfg.external.secret is not None:
        register_secret(cfg.external.secret.get_secret_value())
    for key, value in cfg.kafka.client_config.items():
        if "password" in key or "secret" in key:
            register_secret(value)
