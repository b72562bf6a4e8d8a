"""Credentials in URIs are never printed or written by tlkit: the one function that masks them.

A tracking URI such as http://user:secret@host can reach the console, recipe.yaml, provenance.json (the command
line), the trackers and the HTML report; each of them shows it through `redact_credentials`. The trackers' own
environment variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, WANDB_API_KEY) keep secrets out of
recipes and command lines in the first place.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@ — the password runs to the LAST '@' of the word, so an unencoded '@' in it is masked too
# (masking a little too much is harmless; showing part of a password is not). Quotes and whitespace end a word, so a
# URI inside YAML, JSON or a command line is found as well.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@\"'<>]*):(?P<password>[^\s\"'<>]*)@")


def redact_credentials(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***: http://bob:s3cret@host -> http://bob:***@host."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without user and password, user, password); password None when absent or already masked."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    password = unquote(parts.password) if parts.password not in (None, MASK) else None
    return urlunsplit(parts._replace(netloc=host)), unquote(parts.username or "") or None, password
