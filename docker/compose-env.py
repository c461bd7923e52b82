#!/usr/bin/env python3
"""Write the demo's secrets into a git-ignored `.env` next to docker-compose.yml (`make compose-env`).

docker-compose.yml has no default for any secret (`${VAR:?...}`): `docker compose up` refuses to start
until each is set. This script sets them to random values, once:

- a missing `.env` is created with mode 0600;
- an existing one keeps every value it has (PostgreSQL sets the `pulse` role's password on the volume's
  first start only, so a new value would lock Pulse out) and only gets the secrets it lacks appended;
- the values are never printed, only the names.

Passwords are hex (safe in a URL, a Redis config line and a shell); the webhook secret is a Standard
Webhooks `whsec_` + base64 of 32 random bytes. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hex() -> str:
    return secrets.token_hex(24)


def _webhook() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# name -> (what it is, generator). docker-compose.yml requires exactly these (tests/integration/test_compose.py).
SECRETS = {
    "POSTGRES_PASSWORD": ("the postgres superuser of the container", _hex),
    "PULSE_DB_PASSWORD": ("the pulse role (LOGIN REPLICATION, not a superuser)", _hex),
    "PULSE_REDIS_PASSWORD": ("Redis requirepass; Pulse's PULSE_REDIS_URL carries it", _hex),
    "PULSE_EXTERNAL_SECRET": ("Standard Webhooks secret: consumer-external signs, receiver verifies", _webhook),
    "PULSE_RECEIVER__CONTROL_TOKEN": ("bearer token of the receiver's /_control, /_reset, /stats, /events", _hex),
}

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def existing_names(text: str) -> set[str]:
    return {m.group(1) for m in map(_LINE.match, text.splitlines()) if m}


def write(path: Path) -> list[str]:
    """Create or complete `path`; the names added, in order."""
    text = path.read_text() if path.exists() else ""
    have = existing_names(text)
    missing = [name for name in SECRETS if name not in have]
    if not missing:
        return []
    lines = [] if text else ["# Demo secrets for docker-compose.yml, written by `make compose-env`. Git-ignored;",
                             "# keep it private (mode 0600). Values stay once written: see docs/deploy.md, Secrets."]
    for name in missing:
        what, make = SECRETS[name]
        lines += [f"# {what}", f"{name}={make()}"]
    sep = "" if not text or text.endswith("\n") else "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (sep + "\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=ROOT / ".env", help="the file to write (default: .env)")
    args = parser.parse_args(argv)
    added = write(args.path)
    if added:
        print(f"{args.path}: added {', '.join(added)} (random; values not shown)")
    else:
        print(f"{args.path}: every secret already set, nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
