"""Lifecycle hooks as blinker signals, Flask's own convention.

Connect a receiver with ``@swarm_created.connect_via(app)``; the sender is the
Flask application whose hub raised the event. Receivers run in the greenlet
that caused the event: keep them short and never block in them.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A swarm was created. kwargs: ``swarm_id``, ``cid`` (the initiator).
swarm_created = _signals.signal("swarm-created")
#: A peer joined a swarm (not sent for the initiator). kwargs: ``swarm_id``, ``cid``.
peer_joined = _signals.signal("peer-joined")
#: A peer's stream ended (not sent for the initiator). kwargs: ``swarm_id``, ``cid``.
peer_left = _signals.signal("peer-left")
#: A swarm ended with its initiator. kwargs: ``swarm_id``, ``cid`` (the initiator).
swarm_closed = _signals.signal("swarm-closed")

#: A stream of this process opened. kwargs: ``stream`` (:class:`~flask_signal.hub.Stream`).
client_connected = _signals.signal("client-connected")
#: A stream of this process ended, exactly once per ``client_connected``. kwargs: ``stream``.
client_disconnected = _signals.signal("client-disconnected")
#: A channel got its first subscriber in this process. kwargs: ``channel``.
channel_opened = _signals.signal("channel-opened")
#: The last subscriber of a channel in this process left. kwargs: ``channel``.
channel_emptied = _signals.signal("channel-emptied")
#: A message was delivered on a channel in this process. kwargs: ``channel``, ``id``,
#: ``event``, ``clients`` (how many local streams it reached).
message_published = _signals.signal("message-published")
#: Application code run for a stream failed (a declared stream's initial data, as
#: sse.io's ``error`` event); the client got an ``error`` event and its stream stays
#: open. kwargs: ``exception``, ``stream``.
error = _signals.signal("error")
