"""A QR code drawn with text characters, so ``p2pd offer`` can be scanned off a terminal.

Why segno: it is a maintained, pure-Python, dependency-free QR encoder that follows ISO/IEC
18004 (mode selection, error correction, masking); encoding QR by hand would be hundreds of
lines to get wrong.  This module only draws segno's module matrix.

Drawing: one character cell holds two module rows, using the half blocks ``▀`` and ``▄``,
the full block ``█`` and a space, so the code is about square on a terminal and half as tall
as one line per row.  Terminals draw characters in the foreground colour on the background,
and most are light text on a dark background: so *light* modules (and the quiet-zone
border) are drawn as blocks and dark modules are left as background, as ``qrencode -t
UTF8`` does.  ``light_on_dark=False`` draws the other way for dark-on-light terminals.
Scanners also read an inverted code, but not all of them.
"""

from __future__ import annotations

import segno

#: Upper half block, lower half block, full block, space, indexed by (top << 1) | bottom
#: where a bit is 1 when that half is drawn in the foreground colour.
HALF_BLOCKS = (" ", "\u2584", "\u2580", "\u2588")
#: Quiet zone around the code, in modules.  The standard asks for 4; scanners read a code
#: with 1 when the terminal around it is plain, and the code stays compact.
DEFAULT_BORDER = 1


def qr_matrix(text: str) -> list[list[bool]]:
    """segno's module matrix for ``text`` (``True`` = dark), without quiet zone.

    A full QR code (not Micro QR, which many phone scanners do not read); segno picks the
    densest mode (alphanumeric for an offer) and the smallest version.
    """
    code = segno.make(text, micro=False)
    return [[bool(module) for module in row] for row in code.matrix]


def render_qr(text: str, *, border: int = DEFAULT_BORDER, light_on_dark: bool = True) -> str:
    """``text`` as a QR code in half-block characters, one line per two module rows.

    Lines are joined by ``\\n``, without a trailing newline, and all have the same width.
    """
    matrix = qr_matrix(text)
    size = len(matrix) + 2 * border

    def drawn(row: int, column: int) -> bool:
        """Whether a module is drawn in the foreground colour (outside the code: no)."""
        if not 0 <= row < size:
            return False
        inner_row, inner_column = row - border, column - border
        inside = 0 <= inner_row < len(matrix) and 0 <= inner_column < len(matrix)
        dark = inside and matrix[inner_row][inner_column]
        return dark != light_on_dark

    lines = []
    for top in range(0, size, 2):
        lines.append(
            "".join(
                HALF_BLOCKS[(drawn(top, column) << 1) | drawn(top + 1, column)]
                for column in range(size)
            )
        )
    return "\n".join(lines)
