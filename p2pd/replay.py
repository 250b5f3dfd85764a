"""Anti-replay sliding window for DATA counters (RFC 6479, as Linux WireGuard does it).

Theory of operation
-------------------
Each DATA packet carries a u64 counter, used once per keypair.  UDP may lose, duplicate
and reorder packets, so a receiver accepts any counter it has not seen that is not too
far behind the highest one it has seen, and rejects everything else.

The window remembers the highest accepted counter ``top`` and one bit per counter in
``[top - WINDOW_SIZE, top]``.  As in RFC 6479 the bits live in a ring of
:data:`RING_BLOCKS` 64-bit blocks; one block more than the window needs is kept so
that moving forward only clears the blocks it enters, and never has to shift
bits: a jump costs O(blocks cleared) (at most the whole ring), not O(window).

Invariants (checked against a set-and-max model in tests/unit/test_replay.py):

* a counter is accepted at most once;
* with nothing seen yet, every counter in ``[0, 2**64)`` is accepted;
* otherwise a fresh counter ``c`` is accepted iff ``c >= top - WINDOW_SIZE``;
* counters outside ``[0, 2**64)`` are always rejected.

Only :meth:`ReplayWindow.update` mutates.  The session calls :meth:`check` before
decrypting (cheap early drop) and :meth:`update` only after the packet authenticated,
so forged packets can never move the window.
"""

from __future__ import annotations

from typing import Final

#: Bits per ring block: a machine word, as in RFC 6479 and WireGuard.
BLOCK_BITS: Final = 64
#: log2(BLOCK_BITS), to find a counter's block by shifting.
BLOCK_SHIFT: Final = 6
#: Total bits in the ring: 8192, as Linux WireGuard's COUNTER_BITS_TOTAL.
RING_BITS: Final = 8192
#: Blocks in the ring (a power of two, so the ring index is a mask).
RING_BLOCKS: Final = RING_BITS // BLOCK_BITS
#: How far behind the highest counter a late packet may be: the ring less one block,
#: which is the block being filled (WireGuard's COUNTER_WINDOW_SIZE = 8128).
WINDOW_SIZE: Final = RING_BITS - BLOCK_BITS
#: Counters are u64 on the wire; anything at or above this is rejected.
COUNTER_LIMIT: Final = 2**64

_RING_MASK: Final = RING_BLOCKS - 1
_BIT_MASK: Final = BLOCK_BITS - 1
assert 1 << BLOCK_SHIFT == BLOCK_BITS
assert WINDOW_SIZE >= 2048


class ReplayWindow:
    """Which DATA counters of one keypair are fresh.  Not thread-safe; sans-IO."""

    __slots__ = ("_ring", "_top")

    def __init__(self) -> None:
        # Internally counters are shifted by one (as in WireGuard), so _top == 0 means
        # "nothing seen" and counter 0 is an ordinary value.
        self._top = 0
        self._ring = [0] * RING_BLOCKS

    def __repr__(self) -> str:
        return f"ReplayWindow(highest={self.highest})"

    @property
    def highest(self) -> int | None:
        """The highest counter accepted so far, or None."""
        return self._top - 1 if self._top else None

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted now?  Changes nothing."""
        if not 0 <= counter < COUNTER_LIMIT:
            return False
        shifted = counter + 1
        if shifted > self._top:
            return True
        if shifted + WINDOW_SIZE < self._top:
            return False
        block = (shifted >> BLOCK_SHIFT) & _RING_MASK
        return not (self._ring[block] >> (shifted & _BIT_MASK)) & 1

    def update(self, counter: int) -> bool:
        """Accept and record ``counter``; False if duplicate, too old or out of range."""
        if not 0 <= counter < COUNTER_LIMIT:
            return False
        shifted = counter + 1
        if shifted + WINDOW_SIZE < self._top:
            return False
        index = shifted >> BLOCK_SHIFT
        if shifted > self._top:
            current = self._top >> BLOCK_SHIFT
            for step in range(1, min(index - current, RING_BLOCKS) + 1):
                self._ring[(current + step) & _RING_MASK] = 0
            self._top = shifted
        block = index & _RING_MASK
        bit = 1 << (shifted & _BIT_MASK)
        if self._ring[block] & bit:
            return False
        self._ring[block] |= bit
        return True
