"""Property-based: schemathesis generates valid and invalid requests from the gateway's OpenAPI
document and sends them to the live gateway; none may get a 5xx or an undocumented answer.

The document is built at import time, from the same application factory the server uses (a
test below checks it equals what the server serves at /openapi.json): schemathesis needs it at
collection, and its fixture-based loader does not work with this pytest.
"""

from __future__ import annotations

from typing import Any

import schemathesis
import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cpoa.gateway import app as gateway_app
from tests.fix_gateway import LiveGateway

MAX_EXAMPLES = 30
"""Per operation: bounded, and with derandomize the same cases on every run."""

DOCUMENT: dict[str, Any] = gateway_app.create_app(None).openapi()  # type: ignore[arg-type]
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_document__is_what_the_server_serves(gateway: LiveGateway):
    """The document the cases come from is the one served at /openapi.json."""
    assert gateway.client.get("/openapi.json").json() == DOCUMENT


OPERATIONS = {op.label: op for op in (found.ok() for found in schema.get_all_operations())}
"""Every operation of the document, by its label ("POST /v1/podcasts"). Parametrised by label
(schema.parametrize() gives all its cases one test id, which pytest-xdist runs only once)."""

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api__generated_requests_get_documented_non_5xx_answers(label: str,
                                                                gateway: LiveGateway):
    """Whatever the generated request, the answer is not a 5xx, and its status, content type
    and body are the ones the document promises."""

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    def each_case(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=gateway.url, checks=CHECKS)

    each_case()
