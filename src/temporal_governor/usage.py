"""Actual usage: what activities report, and what is read from model-response shapes.

Inside an activity, :func:`report_usage` adds to the current attempt's usage. When the
activity returns, the activity interceptor attaches the total (of this and every earlier
attempt) to the result payload, so it reaches the workflow through the activity result
path and replay sees the same numbers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .accounting import Amounts


class Usage(BaseModel):
    """Actual usage of one dispatch (all attempts of an activity, or a child's subtree)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cost_usd: float = 0.0
    """Dollars, as reported or priced from the policy's price table."""
    tool_calls: int = 0
    """Tool calls made inside the activity (beyond the dispatch itself)."""
    subtasks: int = 0
    """For a child run: the child workflows it started directly."""
    child_workflows: int = 0
    """For a child run: the child workflows in its subtree."""
    attempts: int = 1
    """How many attempts the usage covers."""
    models: dict[str, int] = Field(default_factory=dict)
    """Tokens per model name."""
    unpriced_tokens: int = 0
    """Tokens of models missing from the price table and reported without a cost."""
    backpressure: dict[str, Any] | None = None
    """Backpressure the activity emitted (:func:`emit_backpressure`), the last one."""

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        models = dict(self.models)
        for name, tokens in other.models.items():
            models[name] = models.get(name, 0) + tokens
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            tool_calls=self.tool_calls + other.tool_calls,
            subtasks=self.subtasks + other.subtasks,
            child_workflows=self.child_workflows + other.child_workflows,
            attempts=self.attempts + other.attempts,
            models=models,
            unpriced_tokens=self.unpriced_tokens + other.unpriced_tokens,
            backpressure=other.backpressure or self.backpressure,
        )

    def amounts(self) -> Amounts:
        """The resource amounts this usage consumes."""
        return Amounts(
            tokens=self.tokens,
            cost_usd=self.cost_usd,
            tool_calls=self.tool_calls,
            subtasks=self.subtasks,
            child_workflows=self.child_workflows,
        )

    @classmethod
    def from_amounts(cls, amounts: Amounts) -> Usage:
        """Usage from a run's committed amounts (tokens are reported as output tokens)."""
        return cls(
            output_tokens=int(amounts.tokens),
            cost_usd=amounts.cost_usd,
            tool_calls=int(amounts.tool_calls),
            subtasks=int(amounts.subtasks),
            child_workflows=int(amounts.child_workflows),
        )


@dataclass
class UsageMeter:
    """Collects the usage of one activity attempt (mutable, lives in a context variable)."""

    price: Any = None
    """Callable ``(model, input_tokens, output_tokens) -> float | None`` from the policy."""
    usage: Usage = field(default_factory=lambda: Usage(attempts=0))
    reported: bool = False

    def add(
        self,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        model: str | None,
        tool_calls: int,
    ) -> None:
        """Add one report to the attempt's usage."""
        unpriced = 0
        if cost_usd is None:
            priced = self.price(model, input_tokens, output_tokens) if self.price else None
            if priced is None:
                unpriced = input_tokens + output_tokens
            cost_usd = priced or 0.0
        models = {model: input_tokens + output_tokens} if model else {}
        self.usage = self.usage + Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            tool_calls=tool_calls,
            attempts=0,
            models=models,
            unpriced_tokens=unpriced,
        )
        self.reported = True


_meter: contextvars.ContextVar[UsageMeter | None] = contextvars.ContextVar(
    "temporal_governor_usage_meter", default=None
)


def set_meter(meter: UsageMeter) -> contextvars.Token[UsageMeter | None]:
    """Make a meter current for the running activity (used by the activity interceptor)."""
    return _meter.set(meter)


def reset_meter(token: contextvars.Token[UsageMeter | None]) -> None:
    """Undo :func:`set_meter`."""
    _meter.reset(token)


def report_usage(
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float | None = None,
    model: str | None = None,
    tool_calls: int = 0,
) -> None:
    """Report usage from inside a governed activity; call it any number of times.

    When ``cost_usd`` is omitted the cost is priced from the policy's ``models`` table
    for ``model``. Calls outside a governed activity are ignored, so activities stay
    usable without the governor.

    Args:
        input_tokens: Prompt tokens used.
        output_tokens: Completion tokens used.
        cost_usd: Dollars spent, if the provider says.
        model: The model name, for pricing and per-model totals.
        tool_calls: Tool calls made inside the activity.

    """
    meter = _meter.get()
    if meter is None:
        return
    for name, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("tool_calls", tool_calls),
    ):
        if value < 0:
            raise ValueError(f"report_usage: {name} must be >= 0, got {value!r}")
    if cost_usd is not None and cost_usd < 0:
        raise ValueError(f"report_usage: cost_usd must be >= 0, got {cost_usd!r}")
    meter.add(int(input_tokens), int(output_tokens), cost_usd, model, int(tool_calls))


def emit_backpressure(
    *,
    retry_after_ms: int = 0,
    max_concurrency: int | None = None,
    reduce_batch_to: int | None = None,
    reason: str = "",
    source: str = "",
    duration_ms: int = 60_000,
) -> None:
    """Ask the workflow that dispatched this activity (and its parents) to slow down.

    Call it from a governed activity, for example when a provider answers 429: the
    backpressure rides back with the activity's result or failure, the run applies it
    (spacing its dispatches ``retry_after_ms`` apart, at most ``max_concurrency`` in
    flight, for ``duration_ms``) and forwards it up its parent chain as the policy's
    ``control.backpressure_propagation`` says. Outside a governed activity it does nothing.

    Args:
        retry_after_ms: Least time between two dispatches while it holds.
        max_concurrency: Most dispatches in flight at once while it holds.
        reduce_batch_to: Advice to agent code: batch at most this many items.
        reason: Why (kept in the audit trail).
        source: Who is overloaded (a tool, a provider).
        duration_ms: How long it holds.

    """
    meter = _meter.get()
    if meter is None:
        return
    if retry_after_ms < 0 or duration_ms <= 0:
        raise ValueError("emit_backpressure: retry_after_ms must be >= 0 and duration_ms > 0")
    wanted: dict[str, Any] = {
        "retry_after_ms": int(retry_after_ms),
        "max_concurrency": max_concurrency,
        "reduce_batch_to": reduce_batch_to,
        "reason": reason,
        "source": source,
        "duration_ms": int(duration_ms),
    }
    meter.usage = meter.usage.model_copy(update={"backpressure": wanted})


_INPUT_KEYS = ("input_tokens", "prompt_tokens", "request_tokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens", "response_tokens")
_MODEL_KEYS = ("model", "model_name")


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _first_int(obj: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = _field(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def usage_in_result(result: Any) -> tuple[int, int, str | None] | None:
    """Find token usage in a result shaped like a model response.

    Recognises a ``usage`` attribute or key carrying ``input_tokens``/``output_tokens``
    (OpenAI Agents, pydantic-ai), ``prompt_tokens``/``completion_tokens`` (OpenAI chat
    completions) or ``request_tokens``/``response_tokens`` (older pydantic-ai). The model
    name is read from ``model`` or ``model_name`` beside ``usage``.

    Args:
        result: What the activity returned.

    Returns:
        ``(input_tokens, output_tokens, model)``, or ``None`` when no usage is found.

    """
    if result is None or isinstance(result, str | bytes | int | float | bool):
        return None
    usage = _field(result, "usage")
    if usage is None:
        return None
    input_tokens = _first_int(usage, _INPUT_KEYS)
    output_tokens = _first_int(usage, _OUTPUT_KEYS)
    if input_tokens is None and output_tokens is None:
        return None
    model = None
    for name in _MODEL_KEYS:
        value = _field(result, name)
        if isinstance(value, str):
            model = value
            break
    return input_tokens or 0, output_tokens or 0, model
