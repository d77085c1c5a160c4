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
from schemathesis.openapi.checks import JsonSchemaError

from tests.support.service import TOKEN, service_config

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


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_200_answer_declares_its_shape(service):
    schema = service.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for media_type, content in operation["responses"]["200"]["content"].items():
                declared = _resolve(schema, content["schema"])
                # A bare object (or nothing) matches any answer: Schemathesis would check nothing.
                shaped = declared.get("properties") or declared.get("items") or declared.get("format") == "binary"
                assert shaped, f"{method.upper()} {path} ({media_type}) declares {declared}"


def test_the_request_bounds_in_the_schema_are_the_limits_of_the_service_config(service):
    limits = service_config(service.db)["maskdex"]["limits"]
    schema = service.get("/openapi.json").json()
    search = schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert (search["k"]["minimum"], search["k"]["maximum"]) == (1, limits["max_k"])
    text = next(v for v in search["text"]["anyOf"] if v.get("type") == "string")  # optional: a query by example
    assert (text["minLength"], text["maxLength"]) == (1, limits["max_text_chars"])
    assert search["oversample"]["maximum"] == 50  # the default max_oversample
    segment = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    classes = next(v for v in segment["properties"]["classes"]["anyOf"] if v.get("type") == "array")
    assert classes["maxItems"] == limits["max_classes"]
    # The server enforces exactly these bounds: the last value inside is taken, the first outside refused.
    for k, status in ((limits["max_k"], 200), (limits["max_k"] + 1, 400), (0, 400)):
        assert service.post("/search", json={"text": "a cat", "k": k}).status_code == status
    for text, status in (("x" * limits["max_text_chars"], 200), ("x" * (limits["max_text_chars"] + 1), 400),
                         ("   ", 400)):
        assert service.post("/search", json={"text": text, "k": 1}).status_code == status


def test_an_answer_that_breaks_its_declared_shape_fails_the_checks(service):
    # The same checks as above against a schema altered to disagree with the real /healthz answer:
    # response schema conformance must catch it (a bare object schema never could).
    schema = service.get("/openapi.json").json()
    schema["components"]["schemas"]["Health"]["properties"]["status"] = {"type": "integer"}
    case = schemathesis.openapi.from_dict(schema)["/healthz"]["GET"].Case()
    response = case.call(base_url=service.url, timeout=60)
    assert response.status_code == 200
    with pytest.raises(BaseExceptionGroup) as failed:
        case.validate_response(response, checks=CHECKS)
    assert failed.group_contains(JsonSchemaError)
