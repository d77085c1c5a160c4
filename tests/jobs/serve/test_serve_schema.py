"""Schemathesis against the service's own OpenAPI schema (GET /openapi.json): requests generated from
what each route declares, valid and not, over real HTTP. Every one is answered, none with a 5xx, every
answer has a declared status and content type and matches the declared schema; the service is
healthy afterwards."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.support.service import TOKEN

pytestmark = pytest.mark.slow

# Per operation: enough to reach every branch of the input checks, small enough that the seven
# operations run in a minute or two on two cores.
EXAMPLES = 25
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


def test_every_generated_request_gets_a_declared_answer(service):
    # Driven by hand rather than by schemathesis.pytest.from_fixture, whose lazy parametrisation
    # does not work with pytest 9; each operation is still its own Hypothesis run.
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    session = requests.Session()
    calls = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # The token lets writes past the auth check, so their bodies' checks are exercised too.
            response = case.call(session=session, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
            calls.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        check()
    assert len(calls) >= len(operations) and all(status < 500 for status in calls)


def test_the_schema_declares_every_route_and_the_service_is_healthy_afterwards(service):
    paths = service.get("/openapi.json").json()["paths"]
    assert {"/search", "/segment", "/supports", "/images/{image_id}", "/images/{image_id}/regions",
            "/images/{image_id}/segmentation", "/healthz"} <= set(paths)
    assert service.get("/healthz").json()["status"] == "ok"
    found = service.post("/search", json={"text": "a cat", "k": 2})
    assert found.status_code == 200 and len(found.json()) == 2
