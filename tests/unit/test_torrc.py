"""``--tor-config`` files: torrc lines become TorLauncher options; p2pd's own are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pd.errors import LocalError
from transports.torrc import RESERVED, parse_torrc, read_torrc


def test_lines_comments_and_repeats() -> None:
    text = (
        "# the lab's network\n"
        "TestingTorNetwork 1\n"
        "\n"
        "DirAuthority a orport=1 10.0.0.1:2 AAAA  # first\n"
        "DirAuthority b orport=3 10.0.0.1:4 BBBB\n"
        "DirAuthority c orport=5 10.0.0.1:6 CCCC\n"
        "UseBridges 1\n"
    )
    assert parse_torrc(text) == {
        "TestingTorNetwork": "1",
        "DirAuthority": [
            "a orport=1 10.0.0.1:2 AAAA",
            "b orport=3 10.0.0.1:4 BBBB",
            "c orport=5 10.0.0.1:6 CCCC",
        ],
        "UseBridges": "1",
    }


@pytest.mark.parametrize("key", [*sorted(RESERVED), "SOCKSPort", "DataDirectory"])
def test_options_p2pd_sets_itself_are_refused_with_the_line(key: str) -> None:
    with pytest.raises(LocalError, match=r"^f:2: p2pd sets .* itself; remove that line$"):
        parse_torrc(f"Log notice stdout\n{key} 9050\n", source="f")


def test_garbage_is_one_clear_line() -> None:
    with pytest.raises(LocalError, match=r"^torrc:1: not a torrc option"):
        parse_torrc("=oops\n")


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LocalError, match=r"cannot read tor config .*nope"):
        read_torrc(missing)


@given(st.text(max_size=400))
def test_any_text_parses_or_is_a_local_error(text: str) -> None:
    try:
        options = parse_torrc(text)
    except LocalError:
        return
    assert not {key.lower() for key in options} & RESERVED
