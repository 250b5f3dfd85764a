"""The channel's lifecycle: its states, what moves it, and the one table of transitions.

::

    OPEN --local close / peer CLOSE--> CLOSING --flushed--> CLOSED --linger expired--> TERMINATED
      |                                   |                   |
      +------- idle / protocol error -----+-------------------+--------------------> TERMINATED

* OPEN: messages may be sent.
* CLOSING: no new message; queued ones are still delivered; our CLOSE is on its way.
* CLOSED: every message both ways is delivered and ``ChannelClosed("closed")`` was
  reported; the channel lingers to get its CLOSE acknowledged and to ACK the peer's.
* TERMINATED: nothing more will happen; ``get_timer()`` returns None.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    TERMINATED = "terminated"


class Trigger(enum.Enum):
    LOCAL_CLOSE = "local close"
    PEER_CLOSE = "peer close"
    FLUSHED = "our data acknowledged, the peer's stream received up to its CLOSE"
    LINGER_EXPIRED = "linger expired"
    IDLE = "idle timeout"
    PROTOCOL_ERROR = "protocol error"


#: Every legal state change; any other (state, trigger) pair is a bug in the channel.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.OPEN, Trigger.LOCAL_CLOSE): State.CLOSING,
    (State.OPEN, Trigger.PEER_CLOSE): State.CLOSING,
    (State.CLOSING, Trigger.FLUSHED): State.CLOSED,
    (State.CLOSED, Trigger.LINGER_EXPIRED): State.TERMINATED,
    (State.OPEN, Trigger.IDLE): State.TERMINATED,
    (State.CLOSING, Trigger.IDLE): State.TERMINATED,
    (State.CLOSED, Trigger.IDLE): State.TERMINATED,
    (State.OPEN, Trigger.PROTOCOL_ERROR): State.TERMINATED,
    (State.CLOSING, Trigger.PROTOCOL_ERROR): State.TERMINATED,
    (State.CLOSED, Trigger.PROTOCOL_ERROR): State.TERMINATED,
}


def next_state(state: State, trigger: Trigger) -> State:
    """The state after ``trigger`` in ``state`` (KeyError if the table forbids it)."""
    return TRANSITIONS[(state, trigger)]
