"""schemathesis against the running service's OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serving_helpers import serving


def test_no_generated_request_gets_a_server_error(mnist_run, tmp_path):
    with serving(mnist_run, feedback_db=str(tmp_path / "feedback.db"), admin_token="s3cret", keep_unlabelled=5,
                 models_dir=str(mnist_run.parent)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/predict", "/v1/predict/batch", "/v1/feedback", "/v1/queue",
                                                  "/admin/reload", "/v1/model", "/health/ready", "/metrics"}
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                case.call_and_validate(checks=[not_a_server_error])

            fuzz()
