"""API keys: `api_user`/`api_secret` pairs, as the hosted API expects them.

Keys come from the IQA_API_KEYS environment variable ("user1:secret1,user2:secret2")
and/or a keys file with one ``api_user:api_secret`` per line (blank lines and lines
starting with ``#`` are skipped). With no keys at all the server is open.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

ENV_VAR = "IQA_API_KEYS"


class KeyConfigError(ValueError):
    """A malformed key definition; raised at start-up, never per request."""


def _parse_pair(text: str, where: str) -> tuple[str, str]:
    user, sep, secret = text.strip().partition(":")
    user, secret = user.strip(), secret.strip()
    if not sep or not user or not secret:
        raise KeyConfigError(f"{where}: expected 'api_user:api_secret', got {text.strip()!r}")
    return user, secret


def parse_env_keys(value: str | None) -> dict[str, str]:
    """Parse "user1:secret1,user2:secret2" (commas or whitespace between pairs)."""
    keys: dict[str, str] = {}
    for i, item in enumerate((value or "").replace(",", " ").split(), start=1):
        user, secret = _parse_pair(item, f"{ENV_VAR} entry {i}")
        keys[user] = secret
    return keys


def load_keys_file(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KeyConfigError(f"cannot read keys file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise KeyConfigError(f"keys file {path} is not UTF-8 text (one USER:SECRET per "
                             "line)") from None
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, secret = _parse_pair(line, f"{path}:{number}")
        keys[user] = secret
    return keys


class KeyStore:
    """Checks credentials in constant time with respect to the secret's content."""

    def __init__(self, keys: dict[str, str] | None = None):
        self._keys = {u: s.encode() for u, s in (keys or {}).items()}

    @classmethod
    def from_sources(
        cls, env_value: str | None = None, keys_file: str | os.PathLike | None = None
    ) -> KeyStore:
        keys = parse_env_keys(env_value)
        if keys_file:
            keys.update(load_keys_file(keys_file))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, user: str | None, secret: str | None) -> bool:
        if not self.enabled:
            return True
        expected = self._keys.get(user or "")
        given = (secret or "").encode()
        # Compare against a dummy for unknown users too, so timing does not tell
        # whether a user name exists.
        matches = hmac.compare_digest(expected or b"\0" * 32, given)
        return expected is not None and matches
