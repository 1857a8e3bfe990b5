"""flask_signal: real-time signalling swarms and Server-Sent-Events channels for Flask."""

from __future__ import annotations

from .brokers import Broker, BrokerUnavailable, Delivery, Membership
from .extension import DEFAULTS, Signal, Subscription
from .signals import (
    channel_emptied,
    channel_opened,
    client_connected,
    client_disconnected,
    message_published,
    peer_joined,
    peer_left,
    swarm_closed,
    swarm_created,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "Broker",
    "BrokerUnavailable",
    "Delivery",
    "Membership",
    "Signal",
    "Subscription",
    "__version__",
    "channel_emptied",
    "channel_opened",
    "client_connected",
    "client_disconnected",
    "message_published",
    "peer_joined",
    "peer_left",
    "swarm_closed",
    "swarm_created",
]
