"""What a :class:`~p2pd.reliable.Channel` tells its caller, via ``next_event()``.

Events are plain immutable values (h11/wsproto style): the channel queues them as they
happen and the driver drains them in order.  Every message sent yields exactly one
:class:`MessageDelivered` at the sender and one :class:`MessageReceived` at the receiver;
a channel yields exactly one :class:`ChannelClosed`, last.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ChannelClosed reason: both sides closed and everything outstanding was delivered.
REASON_CLOSED = "closed"
#: ChannelClosed reason: nothing valid was heard for IDLE_TIMEOUT.
REASON_IDLE = "idle"
#: ChannelClosed reason: the peer broke the message framing, so the stream is unusable.
REASON_PROTOCOL_ERROR = "protocol_error"


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A whole message from the peer, delivered once and in the order it was sent."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageDelivered:
    """The peer acknowledged every byte of the message ``send_message`` numbered so.

    ``rtt`` is the seconds from ``send_message`` to the acknowledgement that completed
    it: one round trip for a small message on an idle channel, more when it queued.
    """

    message_id: int
    rtt: float


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is finished; ``reason`` is one of the ``REASON_*`` constants."""

    reason: str


Event = MessageReceived | MessageDelivered | ChannelClosed
