"""Shared CLI state: the config file, the flag overrides, settings loading.

Loading the settings also reports unknown `PULSE_...` variables (a warning
each, with the closest valid name) and refuses a secret given as a
command-line flag: every user of the machine reads it in `ps`. The flags stay
for values without a secret (`--database-url postgresql://pulse@db/pulse`
with the password in ~/.pgpass or PGPASSWORD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse.config import CONTRACT_ENV, Settings, check_environment, load_settings, url_has_password
from pulse.errors import ConfigError
from pulse.log import configure_logging, get_logger, register_secret, register_url_secrets

# Flags that may carry a secret: parameter name -> the variable to use instead.
# `always`: the value is a secret whatever it looks like.
SECRET_FLAGS: dict[str, tuple[str, bool]] = {
    "database_url": ("PULSE_DATABASE_URL", False),
    "redis_url": ("PULSE_REDIS_URL", False),
    "url": ("PULSE_EXTERNAL_URL", False),
    "secret": ("PULSE_EXTERNAL_SECRET", True),
}
assert all(env in CONTRACT_ENV for env, _ in SECRET_FLAGS.values())

_warned: set[str] = set()


@dataclass
class CliState:
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


STATE = CliState()


def configure_early_logging(level: str, fmt: str) -> None:
    configure_logging(level, fmt)


def refuse_secret_flags() -> None:
    """Raise ConfigError when a secret came on the command line (not from its environment variable)."""
    try:  # Typer >= 0.2x carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return
    for name, (env, always) in SECRET_FLAGS.items():
        value = ctx.params.get(name)
        source = ctx.get_parameter_source(name) if value else None
        if getattr(source, "name", None) != "COMMANDLINE":
            continue
        if always or url_has_password(str(value)):
            flag = next((o for p in ctx.command.params if p.name == name for o in p.opts if o.startswith("--")),
                        name)
            what = "a secret" if always else "a URL with a password"
            raise ConfigError(
                f"{flag} was given {what} on the command line, where any user of this machine reads it (ps)",
                hint=f"set {env} or {env}_FILE (a file holding the value, e.g. a Docker/Kubernetes secret) "
                     f"instead of {flag}" + ("" if always else "; or keep the password out of the URL "
                                              "(~/.pgpass, PGPASSWORD)"),
            )


def settings(**sections: dict[str, Any]) -> Settings:
    """Load settings with the global overrides plus a verb's own flags (None = unset)."""
    refuse_secret_flags()
    merged: dict[str, Any] = {k: dict(v) for k, v in STATE.overrides.items()}
    for section, values in sections.items():
        kept = {k: v for k, v in values.items() if v is not None}
        if kept:
            merged.setdefault(section, {}).update(kept)
    cfg = load_settings(STATE.config_file, merged)
    register_secrets(cfg)
    configure_logging(cfg.log.level, cfg.log.format)
    for warning in check_environment():
        if warning not in _warned:
            _warned.add(warning)
            get_logger("pulse.config").warning("config.unknown_variable", problem=warning)
    return cfg


def register_secrets(cfg: Settings) -> None:
    """Make every configured secret hidden wherever it may later be printed (logs, errors, tracebacks)."""
    register_url_secrets(cfg.database.dsn())
    register_url_secrets(cfg.redis.url.get_secret_value())
    if cfg.testsinks.pgtable_url is not None:
        register_url_secrets(cfg.testsinks.pgtable_url.get_secret_value())
    if cfg.board.token is not None:
        register_secret(cfg.board.token.get_secret_value())
    if cfg.external.secret is not None:
        register_secret(cfg.external.secret.get_secret_value())
    for key, value in cfg.kafka.client_config.items():
        if "password" in key or "secret" in key:
            register_secret(value)
