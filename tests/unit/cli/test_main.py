"""The `pulse` command's exit codes and error output: one documented code per kind, no secret printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from pulse.cli import main as cli
from pulse.errors import ConfigError, SlotLostError, TerminalError, TransientError

PW = "Zq7secretPW"
ROOT = Path(__file__).resolve().parents[3]
PULSE = [sys.executable, "-m", "pulse.cli.main"]


def _main_raising(monkeypatch, capsys, exc: BaseException) -> tuple[int, str]:
    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("bad key", hint="set it"), 3),
    (TransientError("redis down", hint="start it"), 4),
    (psycopg2.OperationalError("connection refused"), 4),
    (ConnectionRefusedError(111, "refused"), 4),
    (SlotLostError("slot gone", hint="backfill"), 5),
    (TerminalError("refused", hint="look"), 5),
    (psycopg2.errors.InsufficientPrivilege("permission denied for schema pulse"), 5),
    (RuntimeError("a bug"), 70),
])
def test_each_error_kind_has_its_code(monkeypatch, capsys, exc, code) -> None:
    got, err = _main_raising(monkeypatch, capsys, exc)
    assert got == code
    assert err.startswith("pulse:") or "Traceback" in err


def test_a_driver_error_embedding_the_dsn_is_printed_without_the_password(monkeypatch, capsys) -> None:
    exc = psycopg2.OperationalError(f"could not connect: postgresql://pulse:ab#{PW}@db:5432/src "
                                    f"(host=db sslpassword={PW})")
    code, err = _main_raising(monkeypatch, capsys, exc)
    assert code == 4
    assert "could not connect" in err and "fix:" in err
    assert PW not in err


def test_a_pulse_error_message_and_hint_are_redacted(monkeypatch, capsys) -> None:
    exc = TerminalError(f"cannot use postgresql://pulse:{PW}@db/src", hint=f"try password='{PW} x'")
    code, err = _main_raising(monkeypatch, capsys, exc)
    assert code == 5 and PW not in err and "fix:" in err


def _connect(dsn: str) -> None:
    password = PW  # noqa: F841  (a local holding the secret: a Rich traceback would print it)
    raise RuntimeError(f"unexpected while using {dsn}")


def test_an_unexpected_error_prints_a_redacted_traceback_without_locals(monkeypatch, capsys) -> None:
    def boom(*_a, **_k):
        _connect(f"postgresql://pulse:{PW}@db/src")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 70
    assert "Traceback" in err and "RuntimeError: unexpected while using postgresql://pulse:***@db/src" in err
    assert PW not in err


def test_pretty_tracebacks_stay_off() -> None:
    # Rich tracebacks show locals (a Settings object holds every password).
    assert cli.app.pretty_exceptions_enable is False


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    full.update(env)
    return subprocess.run([*PULSE, *args], capture_output=True, text=True, timeout=60, env=full)


def test_version_usage_and_help_epilog() -> None:
    from pulse import __version__

    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pulse {__version__}"
    assert _run("no-such-verb").returncode == 2
    assert _run("status", "--no-such-option").returncode == 2
    helptext = " ".join(_run("--help").stdout.split())
    for code, name, _ in cli.EXIT_CODES:
        assert f"{code} {name}" in helptext


def test_configuration_and_unreachable_codes_from_the_command_line() -> None:
    bad = _run("status", PULSE_SLOT="bad-slot!")
    assert bad.returncode == 3, bad.stderr
    assert "PULSE_SLOT" in bad.stderr and "Traceback" not in bad.stderr
    # Port 1 on the loopback: refused at once, no server needed.
    down = _run("status", PULSE_DATABASE_URL=f"postgresql://pulse:ab%23{PW}@127.0.0.1:1/src")
    assert down.returncode == 4, down.stderr
    assert "unreachable" in down.stderr and "Traceback" not in down.stderr
    assert PW not in down.stderr + down.stdout


def test_the_documented_table_matches_the_code() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \|", text, flags=re.MULTILINE)
    assert [(int(code), name) for code, name in rows] == [(code, name) for code, name, _ in cli.EXIT_CODES]


def test_a_client_librarys_own_connection_errors_mean_unreachable() -> None:
    """redis-py's ConnectionError and TimeoutError are not the builtins; any library's are recognised by name."""
    import redis

    assert cli.exit_code_for(redis.ConnectionError("refused")) == cli.UNREACHABLE
    assert cli.exit_code_for(redis.TimeoutError("slow")) == cli.UNREACHABLE

    class TimeoutError(Exception):  # noqa: A001  (another library's class of that name)
        pass

    assert cli.exit_code_for(TimeoutError("x")) == cli.UNREACHABLE
    assert cli.exit_code_for(ValueError("a bug")) == cli.INTERNAL
