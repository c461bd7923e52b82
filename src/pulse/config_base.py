"""What every configuration section shares: unknown keys are errors, and URLs' passwords are hidden.

Sections live beside what they configure (a sink's in its folder, `sinks/<kind>/config.py`) and are
assembled into `pulse.config.Settings`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from pulse.log import redact_text


def url_has_password(url: str) -> bool:
    """True when `url` carries a password: in its authority (even unencoded) or as a (ssl)password= parameter."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^@/?#]*(?::[^@]*)?)@", url)
    if m and ":" in m.group(1):
        return True
    return re.search(r"(?:^|[?&\s])(?:ssl)?password=", url, flags=re.IGNORECASE) is not None


def redact_url(url: str) -> str:
    """Return `url` with any password (in the authority or a `password=` parameter) replaced by `***`.

    Textual (pulse.log.redact_text), not parsed: a password holding an
    unencoded '/', '#' or '@' is hidden whole.
    """
    try:
        urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return redact_text(url)


class Section(BaseModel):
    """A config section: an unknown key is a typo, rejected with its name (never silently ignored)."""

    model_config = ConfigDict(extra="forbid")


__all__ = ["Section", "redact_url", "url_has_password"]
