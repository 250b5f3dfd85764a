"""Terminal QR codes: what is drawn is exactly segno's matrix, and a real decoder reads it back."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd.derive import params_from_master
from p2pd.offer import make_offer
from p2pd.qr import HALF_BLOCKS, qr_matrix, render_qr
from transports.base import Candidate

OFFER = make_offer(
    params_from_master(bytes(32)).tag_key,
    [
        Candidate(("203.0.113.7", 51820), "mapped", 0.0),
        Candidate(("198.51.100.9", 40001), "punched", 0.0),
        Candidate(("10.1.2.3", 51820), "lan", 0.0),
    ],
    now_wall=1_800_000_000.0,
)
#: Pixels per module and quiet zone (modules) of the image handed to the decoder.
SCALE = 4
IMAGE_MARGIN = 4


def _unrender(art: str, *, light_on_dark: bool = True) -> list[list[bool]]:
    """Module rows (True = dark) read back from the drawing, a half block at a time."""
    rows: list[list[bool]] = []
    for line in art.split("\n"):
        top, bottom = [], []
        for char in line:
            bits = HALF_BLOCKS.index(char)
            top.append(bool(bits & 2) != light_on_dark)
            bottom.append(bool(bits & 1) != light_on_dark)
        rows += [top, bottom]
    return rows


def _with_border(matrix: list[list[bool]], border: int) -> list[list[bool]]:
    size = len(matrix) + 2 * border
    light = [[False] * size for _ in range(border)]
    middle = [[False] * border + row + [False] * border for row in matrix]
    return light + middle + [list(row) for row in light]


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=1, max_size=200))
@settings(max_examples=30, deadline=None)
def test_every_module_maps_to_its_half_block(text: str) -> None:
    matrix = qr_matrix(text)
    for light_on_dark in (True, False):
        art = render_qr(text, border=1, light_on_dark=light_on_dark)
        rows = _unrender(art, light_on_dark=light_on_dark)
        expected = _with_border(matrix, 1)
        assert rows[: len(expected)] == expected
        # An odd module count leaves a half line below the code, drawn as background.
        assert len(rows) - len(expected) in (0, 1)


def test_output_uses_only_half_blocks_and_lines_of_equal_width() -> None:
    art = render_qr(OFFER)
    lines = art.split("\n")
    assert set(art) <= set(HALF_BLOCKS) | {"\n"}
    assert len({len(line) for line in lines}) == 1
    assert not art.endswith("\n")


def test_an_offer_is_a_compact_code_in_alphanumeric_mode() -> None:
    # 117 alphanumeric characters fit version 5 (37 modules): 20 lines of 39 columns.
    art = render_qr(OFFER, border=1)
    assert len(qr_matrix(OFFER)) == 37
    assert len(art.split("\n")) == 20
    assert len(art.split("\n")[0]) == 39


def test_the_border_is_drawn_light() -> None:
    art = render_qr("P2PD", border=2)
    rows = _unrender(art)
    assert not any(rows[0]) and not any(rows[1])
    assert all(not row[0] and not row[1] for row in rows[: len(rows) - 3])


def _decode(rows: list[list[bool]], *, dark_terminal: bool) -> list[str]:
    """Decode a screenshot of ``rows`` shown on a terminal of the given background."""
    if not os.environ.get("CI"):
        zxingcpp = pytest.importorskip("zxingcpp", reason="zxing-cpp (QR decoder) not installed")
    else:
        import zxingcpp  # CI installs the test extras: a missing decoder must fail there
    size = len(rows[0]) + 2 * IMAGE_MARGIN
    height = len(rows) + 2 * IMAGE_MARGIN
    pixels = bytearray()
    for y in range(height * SCALE):
        row_index = y // SCALE - IMAGE_MARGIN
        for x in range(size * SCALE):
            column = x // SCALE - IMAGE_MARGIN
            inside = 0 <= row_index < len(rows) and 0 <= column < len(rows[0])
            dark = rows[row_index][column] if inside else dark_terminal
            pixels.append(0 if dark else 255)
    image = memoryview(bytes(pixels)).cast("B", (height * SCALE, size * SCALE))
    return [barcode.text for barcode in zxingcpp.read_barcodes(image, try_invert=False)]


def test_a_decoder_reads_the_offer_back_from_the_drawing() -> None:
    # What a phone sees on a dark terminal: drawn blocks are light, the rest is dark.
    rows = _unrender(render_qr(OFFER))
    assert _decode(rows, dark_terminal=True) == [OFFER]


def test_a_decoder_reads_the_dark_on_light_drawing_too() -> None:
    rows = _unrender(render_qr(OFFER, light_on_dark=False), light_on_dark=False)
    assert _decode(rows, dark_terminal=False) == [OFFER]


def test_a_corrupted_drawing_does_not_decode_to_the_offer() -> None:
    # Guards the decoding test against passing vacuously: wipe the finder patterns.
    rows = _unrender(render_qr(OFFER))
    for row in rows[:9]:
        row[:9] = [False] * 9
    assert OFFER not in _decode(rows, dark_terminal=True)
