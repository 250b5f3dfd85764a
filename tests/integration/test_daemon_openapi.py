"""The daemon against its own OpenAPI document, fuzzed by schemathesis.

Every operation but ``/v1/shutdown`` (which would end the run) and the event stream
(which never ends by design; tested in test_daemon_api.py) gets generated requests, valid
and invalid; the responses must conform to the document: documented status codes, JSON
bodies of the documented shape, no server error.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from p2pd.daemon.openapi import document
from tests.integration.daemon_fixture import Daemon, Daemons

pytestmark = pytest.mark.slow

schema = (
    schemathesis.openapi.from_dict(document())
    .exclude(path="/v1/shutdown")
    .exclude(path_regex="/events$")
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    factory = Daemons(tmp_path_factory.mktemp("schema"))
    try:
        yield factory.start("d")
    finally:
        factory.close()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_openapi_document(case: object, live: Daemon) -> None:
    case.call_and_validate(  # type: ignore[attr-defined]
        base_url=live.base_url,
        headers={"Authorization": f"Bearer {live.token}"},
        # A schema cannot say "strong passphrase": valid-looking weak ones are refused.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
        timeout=30,
    )
    assert live.proc.poll() is None
