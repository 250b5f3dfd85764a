"""Fixtures for the network lab's own tests (defined in `fixtures`, shared with other dirs)."""

from .fixtures import lab

__all__ = ["lab"]
