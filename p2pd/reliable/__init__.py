"""Reliable, ordered delivery of whole messages over a lossy datagram session.

A sans-IO core (aioquic style): :class:`Channel` takes authenticated plaintexts and
``now``, returns plaintexts to seal and :class:`Event` values.  QUIC-style loss recovery,
RFC 6298 RTO, NewReno with pacing, flow control, keepalives and a clean close; the wire
format is in ``docs/protocol.md`` ("Reliable channel") and :mod:`._frames`.
"""

from p2pd.reliable._channel import Channel
from p2pd.reliable._config import (
    IDLE_TIMEOUT,
    KEEPALIVE_INTERVAL,
    MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT,
    RECV_WINDOW,
    ChannelConfig,
)
from p2pd.reliable._events import (
    REASON_CLOSED,
    REASON_IDLE,
    REASON_PROTOCOL_ERROR,
    ChannelClosed,
    Event,
    MessageDelivered,
    MessageReceived,
)
from p2pd.reliable._state import State

__all__ = [
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_MESSAGE_SIZE",
    "MAX_PLAINTEXT",
    "REASON_CLOSED",
    "REASON_IDLE",
    "REASON_PROTOCOL_ERROR",
    "RECV_WINDOW",
    "Channel",
    "ChannelClosed",
    "ChannelConfig",
    "Event",
    "MessageDelivered",
    "MessageReceived",
    "State",
]
