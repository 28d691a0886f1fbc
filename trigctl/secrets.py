"""Keep secrets out of output: values from ${ENV} in secret positions, and passwords inside URLs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# The scheme may start only where a run of scheme characters starts (the lookbehind): without it, a
# long run of letters with no "://" costs quadratic time (100,000 letters from a peer: seconds).
_URL_PASSWORD = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)(?P<at>@)")
SECRET_KEY_NAMES = ("password", "passwd")


def url_passwords(text: str) -> list[str]:
    """The passwords of the URLs in ``text`` (``scheme://user:PASSWORD@host``)."""
    return [m.group("pw") for m in _URL_PASSWORD.finditer(text)] if "://" in text else []


def is_secret_key(key: str) -> bool:
    k = key.lower()  # DB_PASSWORD, smtp_passwd, api_token, client_secret, Authorization
    return k.endswith(SECRET_KEY_NAMES) or k.endswith("token") or k.endswith("secret") or k == "authorization"


class Redactor:
    """Replaces known secret values (and URL passwords) with ***."""

    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret that contains another is replaced whole. Very short values
        # would mangle ordinary text; they are still masked where they appear as whole values.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self._short = {s for s in secrets if s and len(s) < 3}

    def __bool__(self) -> bool:
        return True

    def text(self, value: str) -> str:
        if not isinstance(value, str):
            return value
        out = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("at"), value) if "://" in value else value
        for s in self._secrets:
            if s in out:
                out = out.replace(s, "***")
        return out

    def scrub(self, data: Any) -> Any:
        """Mask known secret values anywhere in a nested structure (contexts): keys are left alone,
        so a context key that merely ends in "token" (a pagination token) keeps its value."""
        if isinstance(data, dict):
            return {k: self.scrub(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.scrub(v) for v in data]
        if isinstance(data, str):
            return "***" if data in self._short else self.text(data)
        return data

    def value(self, data: Any, key: str | None = None) -> Any:
        """Redact a nested structure: secret keys' values become ***; strings are scrubbed."""
        if isinstance(data, dict):
            return {
                k: ("***" if isinstance(k, str) and (is_secret_key(k) or k.lower() == "headers") and isinstance(v, str)
                    else self._headers(v) if k == "headers" else self.value(v, k))
                for k, v in data.items()
            }
        if isinstance(data, list):
            return [self.value(v) for v in data]
        if isinstance(data, str):
            if data in self._short:
                return "***"
            return self.text(data)
        return data

    def _headers(self, headers: Any) -> Any:
        if isinstance(headers, dict):
            return {k: "***" for k in headers}
        return self.value(headers)
