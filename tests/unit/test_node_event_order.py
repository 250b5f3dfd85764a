"""A batch of channel events is handled with received ``cands`` first, the rest in order, so
a delivery in the same batch is reported with the path label the peer's addresses imply."""

from __future__ import annotations

from p2pd import messages
from p2pd.node import _cands_first
from p2pd.reliable import MessageDelivered, MessageReceived


def test_cands_go_first_and_the_rest_keep_their_order() -> None:
    delivered = MessageDelivered(message_id=3, rtt=0.01)
    text = MessageReceived(messages.text("cands in a text is just text"))
    cands = MessageReceived(messages.cands([("mapped", "203.0.113.11", 4000)]))
    batch = [delivered, text, cands]
    assert sorted(batch, key=_cands_first) == [cands, delivered, text]


def test_a_text_that_starts_like_cands_is_not_taken_for_it() -> None:
    assert _cands_first(MessageReceived(messages.text("cands"))) == 1
