"""Secrets stay off the command line: a flag carrying one is refused, with the variable to use instead.

`ps` shows every process's arguments to every user of the machine; the
environment (or a `_FILE` variable naming a Docker / Kubernetes secret) does
not. The same flags given a value without a password, or filled from their
environment variable, are accepted.
"""

from __future__ import annotations

import os
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from pulse.cli import common
from pulse.errors import ConfigError

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PULSE_"):
            monkeypatch.delenv(name)


def _probe() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def cmd(database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL"),
            secret: Optional[str] = typer.Option(None, "--secret", envvar="PULSE_EXTERNAL_SECRET")) -> None:
        common.refuse_secret_flags()
        typer.echo("accepted")

    return app


@pytest.mark.parametrize(
    ("args", "env", "refused"),
    [
        (["--database-url", "postgresql://pulse:s3cr3t@db/pulse"], {}, "--database-url"),
        (["--database-url", "postgresql://pulse@db/pulse?password=s3cr3t"], {}, "--database-url"),
        (["--secret", WHSEC], {}, "--secret"),
        (["--database-url", "postgresql://pulse@db/pulse"], {}, None),  # no password: fine
        ([], {"PULSE_DATABASE_URL": "postgresql://pulse:s3cr3t@db/pulse", "PULSE_EXTERNAL_SECRET": WHSEC}, None),
    ],
)
def test_a_secret_on_the_command_line_is_refused(args, env, refused) -> None:
    result = CliRunner().invoke(_probe(), args, env=env)
    if refused is None:
        assert result.exit_code == 0 and "accepted" in result.output, result.output
        return
    assert isinstance(result.exception, ConfigError)
    assert refused in result.exception.message and "ps" in result.exception.message
    assert "_FILE" in result.exception.hint
    assert "s3cr3t" not in str(result.exception) and WHSEC not in str(result.exception)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--sink", "memory", "--database-url", "postgresql://pulse:s3cr3t@127.0.0.1:1/x"],
        ["receiver", "--secret", WHSEC],
        ["dlq", "list", "--database-url", "postgresql://pulse:s3cr3t@127.0.0.1:1/x"],
    ],
)
def test_the_pulse_commands_refuse_before_doing_anything(args) -> None:
    from pulse.cli.main import app

    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError), result.output
    assert "PULSE_DATABASE_URL_FILE" in result.exception.hint or "PULSE_EXTERNAL_SECRET_FILE" in result.exception.hint
