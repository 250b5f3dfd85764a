"""Pytest glue for the network lab: skip-or-fail when the lab cannot run, and a `lab` fixture.

Theory of operation: a lab test must never pass vacuously in CI. `require_lab` skips with the
reason on a developer machine that lacks root, ``ip`` or ``nft``, but fails when the ``CI``
environment variable is set (non-empty), so CI really runs these tests. The `lab` fixture tears
the lab down in its finalizer whatever the test did; `Lab` also registers an atexit hook.

Use from other test directories with ``from tests.netlab.fixtures import lab  # noqa: F401``
(run pytest from the repository root: ``python -m pytest``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .lab import Lab, lab_unavailable_reason


def require_lab() -> None:
    """Return if the lab can run here; otherwise skip, or fail when CI is set."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the network lab must run, but: {reason}", pytrace=False)
    pytest.skip(reason=reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh, empty Lab with a random prefix, torn down after the test even if it fails."""
    require_lab()
    with Lab() as the_lab:
        yield the_lab
