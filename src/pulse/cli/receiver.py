"""`pulse receiver`: the stand-in external endpoint (verifies, records, misbehaves on request).

A test stand-in, not a production endpoint (docs/sinks/external.md, "`pulse receiver`").
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from pulse.receiver import DEFAULT_MAX_BODY_BYTES


def receiver(
    host: Optional[str] = typer.Option(None, "--host", envvar="PULSE_RECEIVER__HOST",
                                       help="Address to bind (default receiver.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", envvar="PULSE_RECEIVER__PORT",
                                       help="Port (0: any free port; default receiver.port, 8787)."),
    secret: Optional[str] = typer.Option(None, "--secret", envvar="PULSE_EXTERNAL_SECRET", show_default=False,
                                         help="Standard Webhooks secret (whsec_...): verify signatures. Only "
                                         "from the environment (or PULSE_EXTERNAL_SECRET_FILE): on the command "
                                         "line it is refused."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Delay added before answering."),
    latency_rate: float = typer.Option(1.0, "--latency-rate", min=0, max=1, help="Fraction of requests delayed."),
    fail_500: float = typer.Option(0.0, "--fail-500", min=0, max=1, help="Fraction answered 500."),
    fail_429: float = typer.Option(0.0, "--fail-429", min=0, max=1, help="Fraction answered 429 + Retry-After."),
    fail_503: float = typer.Option(0.0, "--fail-503", min=0, max=1, help="Fraction answered 503 + Retry-After."),
    retry_after: float = typer.Option(1.0, "--retry-after", min=0, help="Retry-After seconds of 429 / 503."),
    timeout_rate: float = typer.Option(0.0, "--timeout-rate", min=0, max=1,
                                       help="Fraction recorded, then held unanswered (the sender times out)."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", min=0, help="How long a held request is held."),
    reset_rate: float = typer.Option(0.0, "--reset-rate", min=0, max=1,
                                     help="Fraction recorded, then the connection reset instead of answered."),
    reject_status: Optional[int] = typer.Option(None, "--reject-status", min=400, max=599,
                                                help="Answer every POST with this status (e.g. 422)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the fault draws (reproducible runs)."),
    stats_every: float = typer.Option(10.0, "--stats-every", min=0, help="Log the counts every N seconds (0: off)."),
    control_token_file: Optional[Path] = typer.Option(
        None, "--control-token-file", show_default=False,
        help="File holding the bearer token of /_control, /_reset, /stats, /events (else read from "
        "PULSE_RECEIVER__CONTROL_TOKEN or PULSE_RECEIVER__CONTROL_TOKEN_FILE; required unless --host is a "
        "loopback address)."),
    max_body_bytes: Optional[int] = typer.Option(
        None, "--max-body-bytes", envvar="PULSE_RECEIVER__MAX_BODY_BYTES", min=1, show_default=False,
        help=f"Request bodies larger than this are answered 413 (never read into memory; default "
        f"{DEFAULT_MAX_BODY_BYTES})."),
) -> None:
    """Listen for the external sink's POSTs; GET /stats and /events show what arrived (Ctrl-C stops)."""
    from pulse.cli import common
    from pulse.log import get_logger
    from pulse.receiver import Faults, Receiver
    from pulse.sinks.external.signing import decode_secret

    cfg = common.settings(receiver={"host": host, "port": port, "max_body_bytes": max_body_bytes})
    log = get_logger("pulse.receiver")
    host, port = cfg.receiver.host, cfg.receiver.port
    if not secret and cfg.external.secret is not None:
        secret = cfg.external.secret.get_secret_value()  # PULSE_EXTERNAL_SECRET_FILE or the TOML file
    if secret:
        decode_secret(secret)  # a bad secret fails here, with its fix
    token = _control_token(control_token_file) or (
        cfg.receiver.control_token.get_secret_value() if cfg.receiver.control_token else None)
    max_body_bytes = cfg.receiver.max_body_bytes
    faults = Faults(latency_ms=latency_ms, latency_rate=latency_rate, error_500=fail_500, error_429=fail_429,
                    error_503=fail_503, retry_after_s=retry_after, timeout=timeout_rate, timeout_s=timeout_s,
                    reset=reset_rate, reject_status=reject_status)
    rec = Receiver(host, port, secret=secret, faults=faults, seed=seed, control_token=token,
                   max_body_bytes=max_body_bytes).start()
    del cfg
    auth = "with 'Authorization: Bearer <token>'" if token else "no token: loopback only"
    typer.echo(f"pulse receiver (a test stand-in) listening on {rec.url} (GET {rec.url}stats, {rec.url}events; "
               f"POST {rec.url}_control to change faults; {auth})")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(stats_every or 3600):
            if stats_every:
                s = rec.stats()
                log.info("receiver.stats", requests=s["requests"], unique=s["unique"], duplicates=s["duplicates"],
                         conflicts=s["conflicts"], signature_failures=s["signature_failures"],
                         faults=s["faults_served"])
    finally:
        rec.stop()


def _control_token(path: Optional[Path]) -> Optional[str]:
    """The token from the file (first line), else from PULSE_RECEIVER__CONTROL_TOKEN; never from argv (`ps`)."""
    from pulse.errors import ConfigError

    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the control token file {path}: {exc.strerror}",
                              hint="fix --control-token-file / PULSE_RECEIVER__CONTROL_TOKEN_FILE") from exc
        if not text:
            raise ConfigError(f"the control token file {path} is empty", hint="write a token into it")
        return text.splitlines()[0].strip()
    return None  # then receiver.control_token (PULSE_RECEIVER__CONTROL_TOKEN or its _FILE form, or TOML)


def register(app: typer.Typer) -> None:
    app.command("receiver")(receiver)
