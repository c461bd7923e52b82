"""Unit tests for what config accepts by name: unknown keys, `_FILE` secrets, defaults of `pulse run`.

Every test starts from an environment without any PULSE_ variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
import typer

from pulse.config import (
    OTHER_ENV,
    check_environment,
    env_key,
    load_settings,
    url_has_password,
)
from pulse.errors import ConfigError
from pulse.sinks import ENDPOINTS, configured_destinations, pipeline_sinks

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PULSE_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pulse.toml"
    path.write_text(text)
    return path


# --- unknown TOML keys: an error, with the closest valid name ------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[redis]\nurll = "redis://h"\n', "unknown key 'urll' in [redis]; did you mean 'url'?"),
        ('[databse]\nslot = "x"\n', "unknown section [databse]; did you mean [database]?"),
        ('[bigquery]\nspooldir = "x"\n', "did you mean 'spool_dir'?"),
        ('slot = "x"\n', "unknown top-level key 'slot' (keys belong in a [section]); did you mean 'slot' in "
                         "[database]?"),
        ('[nothing_like_it]\na = 1\n', "unknown section [nothing_like_it]"),
    ],
)
def test_an_unknown_toml_name_is_an_error_naming_the_closest(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=toml(tmp_path, text))
    assert expected in info.value.message
    assert str(tmp_path / "pulse.toml") in info.value.message
    assert info.value.hint


def _help_env_names() -> set[str]:
    from pulse.cli.main import app

    names: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for param in cmd.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else (envvar or []))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return names


def test_every_section_that_help_shows_is_accepted_in_toml(tmp_path: Path) -> None:
    names = _help_env_names() - set(OTHER_ENV)
    assert "PULSE_BACKFILL__CHUNK_SIZE" in names and "PULSE_RECEIVER__PORT" in names  # the walk sees subcommands
    sections: dict[str, set[str]] = {}
    for name in names:
        target = env_key(name)
        assert target is not None, f"--help shows {name}, which is no configuration key"
        sections.setdefault(target[0], set()).add(target[1])
    # And a file setting each such section loads (the values are what the typed keys take).
    path = toml(tmp_path, '[backfill]\nchunk_size = 5\nrate_limit = 2.5\n[receiver]\nhost = "0.0.0.0"\nport = 9\n')
    s = load_settings(config_file=path)
    assert (s.backfill.chunk_size, s.backfill.rate_limit, s.receiver.host, s.receiver.port) == (5, 2.5, "0.0.0.0", 9)
    assert {"backfill", "receiver"} <= set(sections)


# --- unknown environment variables ------------------------------------------------------------------


def test_an_unknown_pulse_variable_is_a_warning_with_the_closest_name(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "db").write_text("postgresql://pulse@db/pulse\n")
    monkeypatch.setenv("PULSE_REDIS_ULR", "redis://h")
    monkeypatch.setenv("PULSE_SERVER", "unix:/run/pulse/native")  # PulseAudio's: no suggestion
    monkeypatch.setenv("PULSE_PROJECT_ROOT", "/x")  # Pulse's own, outside the settings
    monkeypatch.setenv("PULSE_REDIS__URL", "redis://h")
    monkeypatch.setenv("PULSE_DATABASE_URL_FILE", str(tmp_path / "db"))
    warnings = check_environment()
    assert warnings == ["PULSE_REDIS_ULR is not a Pulse setting; did you mean PULSE_REDIS_URL? (ignored)",
                        "PULSE_SERVER is not a Pulse setting (ignored)"]
    load_settings()  # a warning, not an error


def test_an_unknown_key_under_a_known_section_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_REDIS__URLL", "redis://h")
    with pytest.raises(ConfigError, match=r"PULSE_REDIS__URLL is not a setting of \[redis\]; did you mean "
                                          r"PULSE_REDIS__URL\?"):
        load_settings()


# --- *_FILE: secrets from files ------------------------------------------------------------------


def test_a_file_variable_gives_the_files_content_without_the_trailing_newline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "db").write_text("postgresql://pulse:pw%2Fwith#odd@db:5432/src\n")
    (tmp_path / "whsec").write_text(WHSEC + "\r\n")
    (tmp_path / "redis").write_text("redis://:pw@cache:6379/0")
    monkeypatch.setenv("PULSE_DATABASE_URL_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("PULSE_EXTERNAL__SECRET_FILE", str(tmp_path / "whsec"))
    monkeypatch.setenv("PULSE_REDIS_URL_FILE", str(tmp_path / "redis"))
    s = load_settings()
    assert s.database.dsn() == "postgresql://pulse:pw%2Fwith#odd@db:5432/src"
    assert s.external.secret.get_secret_value() == WHSEC
    assert s.redis.url.get_secret_value() == "redis://:pw@cache:6379/0"
    assert s.configured("redis", "url")


def test_a_file_of_a_table_valued_key_holds_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka.json").write_text('{"security.protocol": "SASL_SSL", "sasl.password": "pw"}\n')
    monkeypatch.setenv("PULSE_KAFKA__CLIENT_CONFIG_FILE", str(tmp_path / "kafka.json"))
    assert load_settings().kafka.client_config == {"security.protocol": "SASL_SSL", "sasl.password": "pw"}


def test_a_file_key_in_toml(tmp_path: Path) -> None:
    (tmp_path / "whsec").write_text(WHSEC + "\n")
    s = load_settings(config_file=toml(tmp_path, f'[external]\nsecret_file = "{tmp_path / "whsec"}"\n'))
    assert s.external.secret.get_secret_value() == WHSEC


def test_a_variable_and_its_file_form_together_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s").write_text(WHSEC)
    monkeypatch.setenv("PULSE_EXTERNAL_SECRET", WHSEC)
    monkeypatch.setenv("PULSE_EXTERNAL_SECRET_FILE", str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="both PULSE_EXTERNAL_SECRET and PULSE_EXTERNAL_SECRET_FILE"):
        load_settings()


def test_an_unreadable_file_names_the_variable_not_the_content(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PULSE_DATABASE_URL_FILE") as info:
        load_settings()
    assert "missing" in info.value.message and info.value.hint


@pytest.mark.parametrize(
    ("url", "has"),
    [
        ("postgresql://pulse:pw@h/db", True),
        ("postgresql://pulse:p@ss@h/db", True),
        ("postgresql://pulse:pa/ss#x@h/db", True),  # unencoded '/' and '#': urlsplit cannot parse it
        ("postgresql://pulse:@h/db", True),
        ("postgresql://pulse@h/db?sslmode=require&password=x", True),
        ("postgresql://pulse@h/db?sslpassword=x", True),
        ("redis://:pw@cache:6379/0", True),
        ("postgresql://pulse@h:5432/db", False),
        ("postgresql://h/db?user=a@b", False),
        ("http://127.0.0.1:8080/hook", False),
    ],
)
def test_url_has_password(url: str, has: bool) -> None:
    assert url_has_password(url) is has


# --- the sinks of `pulse run` with none named ---------------------------------------------------------


def test_defaults_are_not_configured_endpoints() -> None:
    s = load_settings()
    assert s.redis.url.get_secret_value() and s.bigquery.project  # defaults exist ...
    assert configured_destinations(s) == {}  # ... but count for nothing
    with pytest.raises(ConfigError) as info:
        pipeline_sinks(s)
    assert "no destination configured" in info.value.message
    for name in ("PULSE_REDIS_URL", "PULSE_BIGQUERY_PROJECT", "PULSE_EXTERNAL_URL", "--sink"):
        assert name in info.value.hint
    assert pipeline_sinks(s, required=False) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PULSE_REDIS_URL": "redis://127.0.0.1:6379/0"}, ["redis"]),  # even set to the default value
        ({"PULSE_REDIS__URL": "redis://h:1/0"}, ["redis"]),
        ({"PULSE_BIGQUERY_PROJECT": "p", "PULSE_EXTERNAL_URL": "http://h/hook"}, ["bigquery", "external"]),
        ({"PULSE_REDIS__PREFIX": "x:", "PULSE_BIGQUERY_DATASET": "d"}, None),  # other keys configure nothing
    ],
)
def test_every_configured_destination_runs(monkeypatch: pytest.MonkeyPatch, env, expected) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    if expected is None:
        with pytest.raises(ConfigError):
            pipeline_sinks(s)
    else:
        assert pipeline_sinks(s) == expected


def test_a_toml_endpoint_configures_too(tmp_path: Path) -> None:
    s = load_settings(config_file=toml(tmp_path, '[bigquery]\nproject = "pulse-local"\n'))
    assert pipeline_sinks(s) == ["bigquery"]


def test_named_sinks_win_and_a_sink_that_keeps_nothing_is_never_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_REDIS_URL", "redis://h:1/0")
    assert pipeline_sinks(load_settings(overrides={"runtime": {"sinks": ["memory"]}})) == ["memory"]
    monkeypatch.setenv("PULSE_RUNTIME__SINKS", '["memory"]')
    assert pipeline_sinks(load_settings()) == ["memory"]
    assert "memory" not in ENDPOINTS
