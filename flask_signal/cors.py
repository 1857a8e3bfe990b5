"""CORS for the hub's answers: which headers a request's Origin earns.

Pure: settings in, header lists out, for the blueprint and the fast path alike,
so that every answer of the hub (streams, signals, errors, preflights) says the
same thing to the same origin.

- Any origin (``SIGNAL_CORS = True`` or ``"*"``): ``Access-Control-Allow-Origin: *``;
  the answer does not depend on the origin, so no ``Vary``. Credentials cannot
  be allowed to any origin (browsers refuse ``*`` with credentials, and echoing
  every origin would give every site its visitors' cookies): refused at init.
- A list of origins: an allowed origin is echoed (with credentials when
  configured), and every answer, allowed or not and with or without an
  Origin, says ``Vary: Origin``, so a shared cache keeps them apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: What a preflight allows: the hub's methods, and the headers its clients send
#: (JSON bodies, EventSource's resume header, publish keys).
METHODS = "GET, HEAD, POST"
HEADERS = "Content-Type, Last-Event-ID, Cache-Control, Authorization"
EXPOSE = "Retry-After"


@dataclass(frozen=True)
class Policy:
    """The CORS policy of one app; :func:`policy` builds it from the settings."""

    origins: frozenset[str] | None  # None: any origin
    credentials: bool = False
    max_age: int = 7200

    def headers(self, origin: str | None, preflight: bool = False) -> list[tuple[str, str]]:
        """Headers for an answer to a request from ``origin`` (``None``: no Origin header)."""
        out: list[tuple[str, str]] = []
        if self.origins is None:
            out.append(("Access-Control-Allow-Origin", "*"))
        else:
            out.append(("Vary", "Origin"))
            if origin is None or origin not in self.origins:
                return out
            out.append(("Access-Control-Allow-Origin", origin))
            if self.credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
        if preflight:
            out += [
                ("Access-Control-Allow-Methods", METHODS),
                ("Access-Control-Allow-Headers", HEADERS),
                ("Access-Control-Max-Age", str(self.max_age)),
            ]
        else:
            out.append(("Access-Control-Expose-Headers", EXPOSE))
        return out


def policy(cors: Any, credentials: bool = False, max_age: int = 7200) -> Policy | None:
    """The policy for ``SIGNAL_CORS`` (``None``: CORS off); raises ValueError when unsound."""
    if not cors:
        if credentials:
            raise ValueError("SIGNAL_CORS_CREDENTIALS needs SIGNAL_CORS: a list of origins")
        return None
    if cors is True or cors == "*":
        if credentials:
            raise ValueError(
                "SIGNAL_CORS_CREDENTIALS cannot be used with SIGNAL_CORS = '*' (any origin): "
                "browsers refuse credentials for '*', and allowing every origin's cookies would "
                "let any site act as its visitors; list the origins instead"
            )
        return Policy(None, False, max_age)
    items: Iterable[Any] = [cors] if isinstance(cors, str) else cors
    origins = frozenset(str(item).rstrip("/") for item in items)
    if "*" in origins:
        raise ValueError("SIGNAL_CORS: '*' means any origin; give it alone, not in a list")
    return Policy(origins, bool(credentials), max_age)
