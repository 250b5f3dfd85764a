"""Path labels: best label wins whatever the order, local vs public, mapping, virtual paths."""

from __future__ import annotations

import pytest

from p2pd.pathbook import PathBook, is_local
from p2pd.vaddr import relay_addr, tcp_addr, tor_addr

PUBLIC = ("203.0.113.12", 40000)


def test_the_best_label_wins_in_any_order() -> None:
    for order in (("punched", "mapped"), ("mapped", "punched")):
        book = PathBook()
        for path in order:
            book.note(PUBLIC, path)
        assert book.label(PUBLIC) == "mapped"


def test_unlabelled_addresses_are_lan_or_direct() -> None:
    book = PathBook()
    assert book.label(("10.7.0.2", 1)) == "lan"
    assert book.label(PUBLIC) == "direct"


def test_our_own_mapping_labels_public_sessions_mapped() -> None:
    book = PathBook()
    book.note(PUBLIC, "punched")
    book.mapped = ("203.0.113.11", 40000)
    assert book.label(PUBLIC) == "mapped"
    assert book.label(("10.1.0.3", 1)) == "lan"


def test_virtual_addresses_take_their_transport_label() -> None:
    book = PathBook()
    assert book.label(relay_addr(0, 9), "relay") == "relay"
    assert book.label(tcp_addr(3), "tcp") == "tcp"
    assert book.rank(relay_addr(0, 9)) > book.rank(PUBLIC)


def test_a_tor_stream_ranks_below_every_other_path() -> None:
    """Ranked roaming leaves Tor for anything else at once, and never goes back to it
    while another path lives."""
    book = PathBook()
    assert book.label(tor_addr(3), "tor") == "tor"
    worst_other = max(book.rank(a) for a in (PUBLIC, relay_addr(0, 9), tcp_addr(3)))
    assert book.rank(tor_addr(3)) > worst_other


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("10.1.0.2", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("fe80::1%eth0", True),
        ("203.0.113.1", False),
        ("198.51.100.7", False),
        ("2001:db8::1", False),
        ("not an ip", False),
    ],
)
def test_local_scope(host: str, local: bool) -> None:
    assert is_local(host) is local


def test_a_local_address_stays_lan_whatever_found_it() -> None:
    book = PathBook()
    book.note(("127.0.0.1", 5), "punched")
    assert book.label(("127.0.0.1", 5)) == "lan"
