"""Render the configuration reference (docs/configuration.md) from the typed settings.

Every key, its environment variable, its default and its description come
from `pulse.config` itself, so the page cannot drift from the code: a unit
test compares the committed page with this rendering.
"""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from pulse.config import CONTRACT_ENV, Settings, redact_url


def _env_names(section: str, key: str) -> str:
    names = [f"`PULSE_{section.upper()}__{key.upper()}`"]
    for env, path in CONTRACT_ENV.items():
        if path == (section, key):
            names.insert(0, f"`{env}`")
    return ", ".join(names)


def _default(value: object) -> str:
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        return f"`{redact_url(raw)}`" if "://" in raw else "(secret)"
    if value is None:
        return "unset"
    return f"`{value}`"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `src/pulse/config.py` by `python -m pulse.config_docs > docs/configuration.md`;",
        "a unit test fails when this page and the code disagree.",
        "",
        "Precedence, highest first: CLI flag > environment > TOML file (`--config FILE` or",
        "`PULSE_CONFIG`) > default. In the TOML file each section is a table (`[database]`,",
        "`[redis]`, ...). Secrets are never printed or logged.",
        "",
        "Every variable has a `_FILE` form (`PULSE_DATABASE_URL_FILE`, `PULSE_EXTERNAL__SECRET_FILE`, ...)",
        "naming a file that holds the value (Docker / Kubernetes secrets; the trailing newline is",
        "stripped); in the TOML file, `<key>_file`. Setting both forms is an error. A secret given as a",
        "command-line flag (`--secret`, a URL with a password) is refused: `ps` shows it to every user.",
        "",
        "Unknown names are reported at start with the closest valid one: an unknown TOML section or",
        "key is an error, and so is an unknown key under a known section in the environment",
        "(`PULSE_REDIS__URLL`); any other unknown `PULSE_...` variable is a warning only, because",
        "other software shares the prefix (PulseAudio's `PULSE_SERVER`, `PULSE_SINK`).",
        "",
    ]
    for section, field in Settings.model_fields.items():
        model = field.default_factory() if field.default_factory else field.default  # type: ignore[misc]
        if not isinstance(model, BaseModel):
            continue
        doc = (type(model).__doc__ or "").strip().splitlines()[0] if type(model).__doc__ else ""
        lines += [f"## `[{section}]`", "", doc, "", "| key | environment | default | meaning |", "|---|---|---|---|"]
        for key, sub in type(model).model_fields.items():
            desc = (sub.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {_env_names(section, key)} | {_default(getattr(model, key))} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render())
