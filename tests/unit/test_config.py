"""Unit tests for pulse.config: layering, contract env names, errors, secrets.

Every test starts from an environment without any PULSE_ variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pulse.config import CONTRACT_ENV, DatabaseConfig, ExternalConfig, Settings, load_settings, redact_url
from pulse.errors import ConfigError, TerminalError

SECRET_PW = "s3cr3t-pw"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PULSE_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str, name: str = "pulse.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- precedence ------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings()
    assert s.database.slot == "pulse"
    assert s.database.publication == "pulse"
    assert s.database.dsn() == "postgresql://pulse@127.0.0.1:5432/pulse"
    assert s.redis.prefix == "pulse:"
    assert s.bigquery.dataset == "pulse"
    assert s.bigquery.table == "engagement_events"
    assert s.bigquery.endpoint is None
    assert s.external.url is None and s.external.secret is None
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.runtime.sinks == []  # none named: `pulse run` picks the configured destinations


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = toml(tmp_path, '[database]\nslot = "from_file"\n[redis]\nprefix = "file:"\n')
    s = load_settings(config_file=path)
    assert s.database.slot == "from_file"
    assert s.redis.prefix == "file:"
    assert s.database.publication == "pulse"  # untouched keys keep their default


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, '[database]\nslot = "from_file"\npublication = "pub_file"\n')
    monkeypatch.setenv("PULSE_SLOT", "from_env")
    s = load_settings(config_file=path)
    assert s.database.slot == "from_env"
    assert s.database.publication == "pub_file"  # nested dicts merge across layers


def test_cli_overrides_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, '[database]\nslot = "from_file"\npublication = "pub_file"\nstate_schema = "st_file"\n')
    monkeypatch.setenv("PULSE_SLOT", "from_env")
    monkeypatch.setenv("PULSE_PUBLICATION", "pub_env")
    s = load_settings(config_file=path, overrides={"database": {"slot": "from_cli"}})
    assert s.database.slot == "from_cli"
    assert s.database.publication == "pub_env"
    assert s.database.state_schema == "st_file"
    assert s.database.source_schema == "public"


@pytest.mark.parametrize(
    ("cli", "env", "file", "expected"),
    [
        (None, None, None, "pulse"),
        (None, None, "f", "f"),
        (None, "e", "f", "e"),
        ("c", "e", "f", "c"),
        ("c", None, "f", "c"),
        ("c", "e", None, "c"),
        (None, "e", None, "e"),
    ],
)
def test_precedence_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli, env, file, expected) -> None:
    path = toml(tmp_path, f'[database]\npublication = "{file}"\n') if file else None
    if env:
        monkeypatch.setenv("PULSE_PUBLICATION", env)
    overrides = {"database": {"publication": cli}} if cli else None
    assert load_settings(config_file=path, overrides=overrides).database.publication == expected


def test_pulse_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_CONFIG", str(toml(tmp_path, '[redis]\nprefix = "envfile:"\n')))
    assert load_settings().redis.prefix == "envfile:"


def test_config_file_argument_wins_over_pulse_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = toml(tmp_path, '[redis]\nprefix = "envfile:"\n', "a.toml")
    arg_file = toml(tmp_path, '[redis]\nprefix = "argfile:"\n', "b.toml")
    monkeypatch.setenv("PULSE_CONFIG", str(env_file))
    assert load_settings(config_file=arg_file).redis.prefix == "argfile:"
    assert os.environ["PULSE_CONFIG"] == str(env_file)  # restored afterwards


def test_config_file_argument_does_not_leak_into_the_environment(tmp_path: Path) -> None:
    load_settings(config_file=toml(tmp_path, "[redis]\nprefix = 'x:'\n"))
    assert "PULSE_CONFIG" not in os.environ
    assert load_settings().redis.prefix == "pulse:"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=toml(tmp_path, "[database\n"))


# --- environment names ---------------------------------------------------------------


CONTRACT_CASES = [
    ("PULSE_DATABASE_URL", "postgresql://u@db.example:5432/src", lambda s: s.database.dsn()),
    ("PULSE_SLOT", "my_slot", lambda s: s.database.slot),
    ("PULSE_PUBLICATION", "my_pub", lambda s: s.database.publication),
    ("PULSE_REDIS_URL", "redis://cache.example:6380/2", lambda s: s.redis.url.get_secret_value()),
    ("PULSE_REDIS_PREFIX", "t123:", lambda s: s.redis.prefix),
    ("PULSE_KAFKA_BOOTSTRAP", "k1:9092,k2:9092", lambda s: s.kafka.bootstrap),
    ("PULSE_BIGQUERY_PROJECT", "proj-x", lambda s: s.bigquery.project),
    ("PULSE_BIGQUERY_DATASET", "ds_x", lambda s: s.bigquery.dataset),
    ("PULSE_BIGQUERY_ENDPOINT", "http://127.0.0.1:9050", lambda s: s.bigquery.endpoint),
    ("PULSE_EXTERNAL_URL", "http://127.0.0.1:8080/hook", lambda s: s.external.url),
    ("PULSE_EXTERNAL_SECRET", WHSEC, lambda s: s.external.secret.get_secret_value()),
]


@pytest.mark.parametrize(("env", "value", "read"), CONTRACT_CASES, ids=[c[0] for c in CONTRACT_CASES])
def test_contract_flat_env_names(monkeypatch: pytest.MonkeyPatch, env: str, value: str, read) -> None:
    monkeypatch.setenv(env, value)
    assert read(load_settings()) == value


def test_every_contract_name_is_tested() -> None:
    assert {c[0] for c in CONTRACT_CASES} == set(CONTRACT_ENV)


def test_nested_double_underscore_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_RUNTIME__QUEUE_MAX_BYTES", str(8 * 1024 * 1024))
    monkeypatch.setenv("PULSE_DATABASE__STATUS_INTERVAL_S", "2.5")
    monkeypatch.setenv("PULSE_LOG__FORMAT", "json")
    monkeypatch.setenv("PULSE_RUNTIME__SINKS", '["memory", "redis"]')
    monkeypatch.setenv("PULSE_DATABASE__SLOT", "nested_slot")
    s = load_settings()
    assert s.runtime.queue_max_bytes == 8 * 1024 * 1024
    assert s.database.status_interval_s == 2.5
    assert s.log.format == "json"
    assert s.runtime.sinks == ["memory", "redis"]
    assert s.database.slot == "nested_slot"


def test_flat_contract_name_wins_over_the_nested_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_DATABASE__SLOT", "nested")
    monkeypatch.setenv("PULSE_SLOT", "flat")
    assert load_settings().database.slot == "flat"


def test_empty_contract_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SLOT", "")
    assert load_settings().database.slot == "pulse"


def test_identifiers_are_lowercased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SLOT", "My_Slot")
    assert load_settings().database.slot == "my_slot"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("PULSE_SLOT", "1starts_with_digit", "database.slot"),
        ("PULSE_SLOT", "has-dash", "database.slot"),
        ("PULSE_PUBLICATION", "x" * 64, "database.publication"),
        ("PULSE_DATABASE_URL", "mysql://u@h/db", "database.url"),
        ("PULSE_EXTERNAL_SECRET", "not-a-whsec", "external.secret"),
        ("PULSE_RUNTIME__QUEUE_MAX_BYTES", "12", "runtime.queue_max_bytes"),
        ("PULSE_RUNTIME__METRICS_PORT", "70000", "runtime.metrics_port"),
        ("PULSE_DATABASE__STATUS_INTERVAL_S", "soon", "database.status_interval_s"),
        ("PULSE_DATABASE__PROTOCOL_VERSION", "3", "database.protocol_version"),
        ("PULSE_LOG__LEVEL", "verbose", "log.level"),
        ("PULSE_BIGQUERY__MODE", "both", "bigquery.mode"),
    ],
)
def test_bad_value_names_the_key_and_its_env_var(monkeypatch: pytest.MonkeyPatch, env, value, key) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert key in message
    assert env in message
    assert isinstance(info.value, TerminalError)
    assert info.value.hint


def test_bad_value_from_the_file_names_the_key(tmp_path: Path) -> None:
    path = toml(tmp_path, "[runtime]\nbatch_max_events = 0\n")
    with pytest.raises(ConfigError, match=r"runtime\.batch_max_events \(PULSE_RUNTIME__BATCH_MAX_EVENTS\)"):
        load_settings(config_file=path)


def test_bad_cli_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"database\.slot \(PULSE_SLOT\)"):
        load_settings(overrides={"database": {"slot": "bad slot"}})


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SLOT", "9x")
    monkeypatch.setenv("PULSE_EXTERNAL_SECRET", "nope")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "PULSE_SLOT" in str(info.value) and "PULSE_EXTERNAL_SECRET" in str(info.value)


def test_unknown_section_in_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="databse"):
        load_settings(config_file=toml(tmp_path, '[databse]\nslot = "x"\n'))


def test_unknown_key_inside_a_section_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="slott"):
        load_settings(config_file=toml(tmp_path, '[database]\nslott = "typo"\n'))


def test_bad_whsec_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        ExternalConfig(secret="Bearer abc")
    assert ExternalConfig(secret=WHSEC).secret.get_secret_value() == WHSEC
    assert ExternalConfig(secret=None).secret is None


def test_config_error_does_not_echo_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_EXTERNAL_SECRET", "topsecretvalue")
    monkeypatch.setenv("PULSE_DATABASE_URL", f"mysql://u:{SECRET_PW}@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "topsecretvalue" not in str(info.value)
    assert SECRET_PW not in str(info.value)


# --- secrets ---------------------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_DATABASE_URL", f"postgresql://pulse:{SECRET_PW}@db:5432/src")
    monkeypatch.setenv("PULSE_REDIS_URL", f"redis://:{SECRET_PW}r@cache:6379/0")
    monkeypatch.setenv("PULSE_EXTERNAL_SECRET", WHSEC)
    s = load_settings(overrides={"testsinks": {"pgtable_url": f"postgresql://t:{SECRET_PW}t@h/db"}})
    for text in (repr(s), str(s), repr(s.database), str(s.external), repr(s.testsinks),
                 s.model_dump_json(), str(s.model_dump())):
        assert SECRET_PW not in text
        assert WHSEC not in text
    # ... while the values themselves are intact for the code that needs them.
    assert s.database.dsn() == f"postgresql://pulse:{SECRET_PW}@db:5432/src"
    assert s.external.secret.get_secret_value() == WHSEC


def test_safe_urls_redact_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_DATABASE_URL", f"postgresql://pulse:{SECRET_PW}@db:5432/src")
    monkeypatch.setenv("PULSE_REDIS_URL", f"redis://:{SECRET_PW}@cache:6379/0")
    s = load_settings()
    assert s.database.safe_url() == "postgresql://pulse:***@db:5432/src"
    assert s.redis.safe_url() == "redis://:***@cache:6379/0"


def test_settings_class_is_usable_directly() -> None:
    assert isinstance(load_settings(), Settings)
    assert DatabaseConfig().slot == "pulse"


# --- redact_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://pulse:pw@127.0.0.1:5432/db", "postgresql://pulse:***@127.0.0.1:5432/db"),
        ("postgresql://pulse:p@ss@h/db", "postgresql://pulse:***@h/db"),  # '@' inside the password
        ("postgresql://pulse:p%40ss@h/db?sslmode=require", "postgresql://pulse:***@h/db?sslmode=require"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),  # empty password
        ("postgresql://pulse@127.0.0.1:5432/db", "postgresql://pulse@127.0.0.1:5432/db"),  # no password
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_unparseable() -> None:
    assert redact_url("http://[::1") == "<unparseable url>"


def test_redact_url_hides_a_password_query_parameter() -> None:
    assert SECRET_PW not in redact_url(f"postgresql://pulse@h/db?password={SECRET_PW}&sslmode=require")
