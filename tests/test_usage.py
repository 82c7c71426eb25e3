"""Reading usage from model-response shapes, and report_usage outside activities."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from temporal_governor.activity import Usage, report_usage
from temporal_governor.usage import UsageMeter, reset_meter, set_meter, usage_in_result


@dataclass
class OpenAIAgentsUsage:
    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass
class ModelResponse:
    usage: OpenAIAgentsUsage
    model_name: str


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (ModelResponse(OpenAIAgentsUsage(10, 20, 30), "gpt-4o"), (10, 20, "gpt-4o")),
        (
            {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
            (5, 7, "gpt-4o-mini"),
        ),
        ({"usage": {"request_tokens": 3, "response_tokens": 4}}, (3, 4, None)),
        ({"usage": {"output_tokens": 9}}, (0, 9, None)),
    ],
)
def test_usage_shapes_are_recognised(result: object, expected: tuple[int, int, str | None]) -> None:
    assert usage_in_result(result) == expected


@pytest.mark.parametrize(
    "result",
    [None, "text", 42, {"usage": None}, {"usage": {"total": 3}}, {"usage": {"input_tokens": True}}],
)
def test_non_usage_results_are_ignored(result: object) -> None:
    assert usage_in_result(result) is None


def test_report_usage_outside_an_activity_is_ignored() -> None:
    report_usage(input_tokens=10)  # no meter: nothing happens, nothing raises


def test_report_usage_prices_from_the_table_and_rejects_negatives() -> None:
    meter = UsageMeter(
        price=lambda model, i, o: (i * 1.0 + o * 2.0) / 1000 if model == "m" else None
    )
    token = set_meter(meter)
    try:
        report_usage(input_tokens=1000, output_tokens=500, model="m")
        report_usage(input_tokens=100, model="unknown")
        report_usage(output_tokens=1, cost_usd=0.5)
        with pytest.raises(ValueError, match="input_tokens must be >= 0"):
            report_usage(input_tokens=-1)
    finally:
        reset_meter(token)
    usage = meter.usage
    assert usage.tokens == 1601
    assert usage.cost_usd == pytest.approx(2.0 + 0.5)
    assert usage.unpriced_tokens == 100
    assert usage.models == {"m": 1500, "unknown": 100}


def test_usage_adds_up() -> None:
    total = Usage(input_tokens=1, models={"a": 1}) + Usage(output_tokens=2, models={"a": 2, "b": 3})
    assert (total.tokens, total.attempts, total.models) == (3, 2, {"a": 3, "b": 3})
