"""ICE servers for WebRTC peers, with short-lived TURN credentials.

Pure: configuration and a clock in, ``RTCIceServer`` dictionaries out. The hub
hands them to each peer in its ``connect`` data (``iceServers``), and the
browser client passes them to ``RTCPeerConnection``.

TURN credentials follow the shared-secret scheme of coturn's
``use-auth-secret`` (the "TURN REST API"): the username is
``<expiry unix time>:<cid>`` and the password the base64 HMAC-SHA1 of the
username under the secret the TURN server shares with the hub, so the TURN
server checks them without asking anyone, and they stop working at expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

#: URL schemes of ICE servers (RFC 7064, RFC 7065).
SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _urls(server: Mapping[str, Any]) -> list[str]:
    urls = server.get("urls")
    return [urls] if isinstance(urls, str) else list(urls or ())


def normalize(servers: Sequence[str | Mapping[str, Any]] | str | None) -> list[dict[str, Any]]:
    """``SIGNAL_ICE_SERVERS`` as ``RTCIceServer`` dicts; raises ValueError on a bad entry.

    Each entry is a URL (``"stun:stun.example.org:3478"``) or a dict with
    ``urls`` (a URL or a list) and optionally ``username`` and ``credential``.
    """
    if servers is None:
        return []
    if isinstance(servers, str):
        servers = [servers]
    result = []
    for entry in servers:
        server = {"urls": entry} if isinstance(entry, str) else dict(entry)
        urls = _urls(server)
        if not urls or not all(isinstance(u, str) and u.startswith(SCHEMES) for u in urls):
            raise ValueError(f"an ICE server needs stun:, stuns:, turn: or turns: URLs: {entry!r}")
        unknown = set(server) - {"urls", "username", "credential"}
        if unknown:
            raise ValueError(f"unknown ICE server keys {sorted(unknown)} in {entry!r}")
        result.append(server)
    return result


def turn_credentials(secret: str, cid: str, expiry: int) -> tuple[str, str]:
    """coturn's ``use-auth-secret`` credentials: ``("<expiry>:<cid>", base64 HMAC-SHA1)``."""
    username = f"{expiry}:{cid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    servers: Sequence[Mapping[str, Any]],
    cid: str,
    *,
    turn_secret: str | None = None,
    ttl: int = 86400,
    now: float,
) -> list[dict[str, Any]]:
    """The ``iceServers`` of one peer: TURN servers without their own credentials get
    short-lived ones for ``cid`` when a ``turn_secret`` is set; STUN servers go as they are."""
    result = []
    credentials: tuple[str, str] | None = None
    for server in servers:
        entry = dict(server)
        is_turn = any(url.startswith(("turn:", "turns:")) for url in _urls(entry))
        if is_turn and turn_secret and "username" not in entry:
            if credentials is None:
                credentials = turn_credentials(turn_secret, cid, int(now) + ttl)
            entry["username"], entry["credential"] = credentials
        result.append(entry)
    return result
