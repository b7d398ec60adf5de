"""Schema-driven fuzzing (Schemathesis) of the API from its own OpenAPI document.

Positive and negative cases for every operation with all checks: no 5xx, responses match the
document, invalid input rejected, valid input accepted, auth enforced. Then a stateful run
follows the document's links (create a job, then read, cancel and page through it).
(Schemathesis' pytest plugin does not support this pytest; Hypothesis drives it directly.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import positive_data_acceptance

from tests.api.support import ApiTenant

EXAMPLES_PER_OPERATION = 25


def fuzz_settings(**extra: Any) -> settings:
    return settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), **extra)


@pytest.fixture
def api_schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def _unique_custom_ids(case: schemathesis.Case) -> None:
    """JSON Schema cannot say "custom_id unique within the job": make generated ones unique."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        return
    for position, item in enumerate(body["requests"]):
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str) and item["custom_id"]:
            item["custom_id"] = f"{position}~{item['custom_id']}"[:64]


def _not_checkable(case: schemathesis.Case) -> list[Any]:
    """A JSONL file or multipart upload is a string to JSON Schema, so a generated one is
    never a valid batch file: "valid data accepted" only applies to inline JSON jobs."""
    if case.media_type in (None, "application/json"):
        return []
    return [positive_data_acceptance]


def _excluded_checks(case: schemathesis.Case, response: Any) -> list[Any]:
    """Checks that do not apply to this exchange.

    Besides `_not_checkable`, one rejection of schema-valid data is by design: whether a prompt
    fits the model's context (or encodes to any token at all) depends on the tokenizer, which
    JSON Schema cannot express. Such a 422 must carry the documented `prompt-too-long` problem
    type; any other rejection of valid data still fails the check.
    """
    excluded = _not_checkable(case)
    if response.status_code == 422:
        try:
            problem = response.json()
        except ValueError:
            return excluded
        if isinstance(problem, dict) and str(problem.get("type", "")).endswith(":prompt-too-long"):
            excluded = [*excluded, positive_data_acceptance]
    return excluded


def _has_inputs(operation: Any) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_every_operation_conforms_to_the_document(
    api_schema: Any, tenant: ApiTenant, mode: schemathesis.GenerationMode
) -> None:
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode is schemathesis.GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to make invalid

        @fuzz_settings(max_examples=EXAMPLES_PER_OPERATION)
        @given(case=operation.as_strategy(generation_mode=mode))
        def exercise(case: schemathesis.Case) -> None:
            _unique_custom_ids(case)
            response = case.call(headers=tenant.headers)
            case.validate_response(
                response,
                excluded_checks=_excluded_checks(case, response),
                headers=tenant.headers,
                transport_kwargs={"headers": dict(tenant.headers)},
            )

        try:
            exercise()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def test_stateful_links_hold(api_schema: Any, tenant: ApiTenant) -> None:
    @api_schema.auth()
    class TenantKey:
        def get(self, case: schemathesis.Case, context: Any) -> str:
            return tenant.key

        def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    machine = api_schema.as_state_machine()

    class AuthorisedMachine(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: schemathesis.Case) -> None:
            _unique_custom_ids(case)

        def validate_response(
            self,
            response: Any,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=_excluded_checks(case, response),
                transport_kwargs=kwargs,
            )

    run_state_machine_as_test(
        AuthorisedMachine, settings=fuzz_settings(max_examples=15, stateful_step_count=6)
    )
