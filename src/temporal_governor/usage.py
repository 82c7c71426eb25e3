"""Actual usage: what activities report, and what is read from model-response shapes.

Inside an activity, :func:`report_usage` adds to the current attempt's usage. When the
activity returns, the activity interceptor attaches the total (of this and every earlier
attempt) to the result payload, so it reaches the workflow through the activity result
path and replay sees the same numbers.

Every amount is checked before it counts: NaN, infinities, negatives and amounts above
:data:`MAX_TOKENS` / :data:`MAX_COST_USD` / :data:`MAX_COUNT` are refused, never counted as
(negative) spend. :func:`report_usage` raises :class:`~temporal_governor.errors.InvalidUsage`
for them; usage read from a result shape is refused without failing the activity. Either
way the attempt is charged at least the policy's estimate for the activity.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .core.accounting import Amounts
from .errors import InvalidUsage

MAX_TOKENS = 10**15
"""The most tokens one report, one dispatch or one run's usage may claim; more is refused as
not believable (and would switch any ceiling off for everyone sharing a budget)."""
MAX_COST_USD = 1e12
"""The most dollars one report or one dispatch's usage may claim."""
MAX_COUNT = 10**12
"""The most tool calls, child workflows or attempts one usage may claim."""
MAX_MODEL_NAME = 200
"""Model names are cut to this many characters."""
MAX_MODELS = 64
"""Most distinct model names one usage keeps; further models' tokens go to ``"(other)"``."""
OTHER_MODELS = "(other)"
"""Where the tokens of models beyond :data:`MAX_MODELS` are counted."""

_Tokens = Field(default=0, ge=0, le=MAX_TOKENS)
_ModelName = Annotated[str, Field(max_length=MAX_MODEL_NAME)]
_ModelTokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
_Count = Field(default=0, ge=0, le=MAX_COUNT)


def amount_problem(name: str, value: Any, ceiling: float) -> str | None:
    """Why a usage amount is refused, or ``None`` when it may count.

    Args:
        name: The amount's name, for the message.
        value: The amount (an ``int`` or a ``float``; ``bool`` is not a number here).
        ceiling: The largest believable amount.

    Returns:
        ``"<name> must be >= 0 (finite, at most <ceiling>), got <value>"``, or ``None``.

    """
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= ceiling
    )
    if ok:
        return None
    return f"{name} must be >= 0 (finite, at most {ceiling:.0e}), got {value!r}"


def _bounded(value: float, ceiling: float) -> float:
    """A sum kept inside ``[0, ceiling]`` (NaN, which no check lets in, counts as the ceiling)."""
    if math.isnan(value) or value > ceiling:
        return ceiling
    return max(value, 0.0)


def _count(value: float, ceiling: int) -> int:
    if 0 <= value <= ceiling:  # the usual case, at once (NaN fails both comparisons)
        return int(value)
    return int(_bounded(value, ceiling))


class Usage(BaseModel):
    """Actual usage of one dispatch (all attempts of an activity, or a child's subtree)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    input_tokens: int = _Tokens
    """Prompt tokens."""
    output_tokens: int = _Tokens
    """Completion tokens."""
    cost_usd: float = Field(default=0.0, ge=0, le=MAX_COST_USD)
    """Dollars, as reported or priced from the policy's price table."""
    tool_calls: int = _Count
    """Tool calls made inside the activity (beyond the dispatch itself)."""
    subtasks: int = _Count
    """For a child run: the child workflows it started directly."""
    child_workflows: int = _Count
    """For a child run: the child workflows in its subtree."""
    attempts: int = Field(default=1, ge=0, le=MAX_COUNT)
    """How many attempts the usage covers."""
    models: dict[_ModelName, _ModelTokens] = Field(default_factory=dict, max_length=MAX_MODELS + 1)
    """Tokens per model name."""
    unpriced_tokens: int = _Tokens
    """Tokens of models missing from the price table and reported without a cost."""
    backpressure: dict[str, Any] | None = None
    """Backpressure the activity emitted (:func:`emit_backpressure`), the last one."""
    refused: str = Field(default="", max_length=2000)
    """Why some usage of this dispatch was refused (NaN, an infinity, a negative or an absurd
    amount), empty when none was. Its true amount is unknown, so the dispatch is charged at
    least the policy's estimate (see :meth:`at_least`)."""

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        models = dict(self.models)
        for name, tokens in other.models.items():
            _add_model(models, name, tokens)
        refused = "; ".join(filter(None, (self.refused, other.refused)))
        return Usage(
            input_tokens=_count(self.input_tokens + other.input_tokens, MAX_TOKENS),
            output_tokens=_count(self.output_tokens + other.output_tokens, MAX_TOKENS),
            cost_usd=_bounded(self.cost_usd + other.cost_usd, MAX_COST_USD),
            tool_calls=_count(self.tool_calls + other.tool_calls, MAX_COUNT),
            subtasks=_count(self.subtasks + other.subtasks, MAX_COUNT),
            child_workflows=_count(self.child_workflows + other.child_workflows, MAX_COUNT),
            attempts=_count(self.attempts + other.attempts, MAX_COUNT),
            models=models,
            unpriced_tokens=_count(self.unpriced_tokens + other.unpriced_tokens, MAX_TOKENS),
            backpressure=other.backpressure or self.backpressure,
            refused=refused[:2000],
        )

    def at_least(self, tokens: float, cost_usd: float, tool_calls: float, why: str) -> Usage:
        """The usage marked refused, raised to at least the given amounts.

        What a dispatch whose usage was refused is charged: what it validly reported, but
        never less than the estimate (the missing tokens count as output tokens).

        Args:
            tokens: The least tokens to charge.
            cost_usd: The least dollars to charge.
            tool_calls: The least tool calls to charge.
            why: What was refused (kept in :attr:`refused`).

        Returns:
            The raised usage.

        """
        missing = _count(tokens, MAX_TOKENS) - self.tokens
        refused = "; ".join(filter(None, (self.refused, why)))
        return self.model_copy(
            update={
                "output_tokens": self.output_tokens + max(missing, 0),
                "cost_usd": max(self.cost_usd, _bounded(cost_usd, MAX_COST_USD)),
                "tool_calls": max(self.tool_calls, _count(tool_calls, MAX_COUNT)),
                "refused": refused[:2000],
            }
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
            output_tokens=_count(amounts.tokens, MAX_TOKENS),
            cost_usd=_bounded(amounts.cost_usd, MAX_COST_USD),
            tool_calls=_count(amounts.tool_calls, MAX_COUNT),
            subtasks=_count(amounts.subtasks, MAX_COUNT),
            child_workflows=_count(amounts.child_workflows, MAX_COUNT),
        )


def _add_model(models: dict[str, int], name: str, tokens: int) -> None:
    """Add a model's tokens, keeping at most :data:`MAX_MODELS` names (then ``(other)``)."""
    name = name[:MAX_MODEL_NAME]
    if name not in models and len(models) >= MAX_MODELS:
        name = OTHER_MODELS
    models[name] = _count(models.get(name, 0) + tokens, MAX_TOKENS)


_NOTHING_YET = Usage(attempts=0)
"""A meter's usage before its first report (frozen, and never changed: reports build anew)."""


@dataclass
class UsageMeter:
    """Collects the usage of one activity attempt (mutable, lives in a context variable)."""

    price: Any = None
    """Callable ``(model, input_tokens, output_tokens) -> float | None`` from the policy."""
    usage: Usage = field(default_factory=lambda: _NOTHING_YET)
    reported: bool = False
    activity: str = ""
    """The activity, as error messages name it (``activity call_llm (id 3) of workflow w``)."""
    refused: list[str] = field(default_factory=list)
    """What was refused in this attempt (the attempt is then charged at least its estimate)."""
    on_report: Any = None
    """Called with no argument after every report (the activity side heartbeats the usage
    so far once the attempt goes on, so that a retry after a crashed worker still counts
    it; an attempt that ends at once carries it on its result or failure)."""

    def add(
        self,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        model: str | None,
        tool_calls: int,
    ) -> None:
        """Add one report to the attempt's usage (amounts already checked)."""
        unpriced = 0
        if cost_usd is None:
            priced = self.price(model, input_tokens, output_tokens) if self.price else None
            if priced is not None and amount_problem("cost", priced, MAX_COST_USD) is not None:
                priced = None  # a price table cannot make spend negative or NaN either
            if priced is None:
                unpriced = input_tokens + output_tokens
            cost_usd = priced or 0.0
        # the sum, built at once (as ``Usage.__add__`` would build it from a usage of
        # this one report: same bounds, same model names)
        usage = self.usage
        models = dict(usage.models)
        if model:
            _add_model(models, model, input_tokens + output_tokens)
        self.usage = Usage(
            input_tokens=_count(usage.input_tokens + input_tokens, MAX_TOKENS),
            output_tokens=_count(usage.output_tokens + output_tokens, MAX_TOKENS),
            cost_usd=_bounded(usage.cost_usd + cost_usd, MAX_COST_USD),
            tool_calls=_count(usage.tool_calls + tool_calls, MAX_COUNT),
            subtasks=usage.subtasks,
            child_workflows=usage.child_workflows,
            attempts=usage.attempts,
            models=models,
            unpriced_tokens=_count(usage.unpriced_tokens + unpriced, MAX_TOKENS),
            backpressure=usage.backpressure,
            refused=usage.refused,
        )
        self.reported = True

    def refuse(self, problem: str) -> str:
        """Record that usage of this attempt was refused; returns the full message."""
        message = f"{self.activity or 'activity'}: {problem}"
        if len(self.refused) < 10:
            self.refused.append(message[:500])
        return message


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

    Every amount must be a finite number, at least 0 and at most :data:`MAX_TOKENS`
    (tokens), :data:`MAX_COST_USD` (dollars) or :data:`MAX_COUNT` (tool calls). A call
    with any other value counts nothing of it and raises
    :class:`~temporal_governor.errors.InvalidUsage`, which fails the activity without
    retries unless it is caught; the attempt is then charged at least the policy's
    estimate for the activity, since what it really spent is unknown.

    Args:
        input_tokens: Prompt tokens used.
        output_tokens: Completion tokens used.
        cost_usd: Dollars spent, if the provider says.
        model: The model name, for pricing and per-model totals.
        tool_calls: Tool calls made inside the activity.

    Raises:
        InvalidUsage: An amount is NaN, infinite, negative or absurdly large.

    """
    meter = _meter.get()
    if meter is None:
        return
    problems = [
        problem
        for name, value, ceiling in (
            ("input_tokens", input_tokens, MAX_TOKENS),
            ("output_tokens", output_tokens, MAX_TOKENS),
            ("tool_calls", tool_calls, MAX_COUNT),
            ("cost_usd", 0.0 if cost_usd is None else cost_usd, MAX_COST_USD),
        )
        if (problem := amount_problem(name, value, ceiling)) is not None
    ]
    if problems:
        raise InvalidUsage(meter.refuse("report_usage refused: " + "; ".join(problems)))
    meter.add(
        math.ceil(input_tokens),
        math.ceil(output_tokens),
        None if cost_usd is None else float(cost_usd),
        None if model is None else str(model),
        math.ceil(tool_calls),
    )
    if meter.on_report is not None:
        meter.on_report()


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
_INPUT_MODEL_KEYS = ("model", "model_name", "model_id")
"""Where a model call's input names the model: ``model`` (OpenAI-style requests),
``model_name`` (the OpenAI Agents SDK's ``invoke_model_activity`` input) and ``model_id``
(pydantic-ai's ``agent__<name>__model_request`` input)."""
_STREAM_COMPLETED = "response.completed"
_MAX_STREAM_EVENTS = 100_000


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _first_number(obj: Any, names: tuple[str, ...]) -> tuple[str, int | float] | None:
    for name in names:
        value = _field(obj, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, value
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bytes | int | float | bool)


def _completed_response(result: Any) -> Any:
    """The final response of a list of streamed Responses API events, if it is one.

    The OpenAI Agents SDK's ``invoke_model_activity_streaming`` returns the stream's
    events; the last ``response.completed`` event carries the response with its usage
    and model.
    """
    if not isinstance(result, list | tuple) or not result or len(result) > _MAX_STREAM_EVENTS:
        return None
    for event in reversed(result):
        if _field(event, "type") == _STREAM_COMPLETED:
            return _field(event, "response")
    return None


def model_in_arguments(args: Sequence[Any]) -> str | None:
    """The model a model call's input names, or ``None``.

    Looks at each argument that is a mapping, a dataclass or an object for a string
    ``model``, ``model_name`` or ``model_id`` (the first argument that has one wins). A
    pydantic-ai model id ``provider:name`` (e.g. ``openai:gpt-4o``) gives ``name``, the
    name pydantic-ai's own responses carry, so that the price table needs one entry.

    Args:
        args: The activity's arguments, as the activity received them.

    Returns:
        The model name (cut to :data:`MAX_MODEL_NAME` characters), or ``None``.

    """
    for arg in args:
        if _is_scalar(arg):
            continue
        for key in _INPUT_MODEL_KEYS:
            try:
                value = _field(arg, key)
            except Exception:  # a property of someone else's object: not a model name
                continue
            if isinstance(value, str) and value:
                if key == "model_id" and ":" in value:
                    value = value.split(":", 1)[1] or value
                return value[:MAX_MODEL_NAME]
    return None


def usage_in_result(result: Any, args: Sequence[Any] = ()) -> tuple[int, int, str | None] | None:
    """Find token usage in a result shaped like a model response.

    Recognises a ``usage`` attribute or key carrying ``input_tokens``/``output_tokens``
    (OpenAI Agents, pydantic-ai), ``prompt_tokens``/``completion_tokens`` (OpenAI chat
    completions) or ``request_tokens``/``response_tokens`` (older pydantic-ai), and a list
    of streamed Responses API events ending in ``response.completed`` (the OpenAI Agents
    SDK's streaming model activity). The model name is read from ``model`` or
    ``model_name`` beside ``usage``; where the result carries none (the OpenAI Agents SDK's
    ``ModelResponse``), from the activity's input (:func:`model_in_arguments`).

    Args:
        result: What the activity returned.
        args: The activity's arguments, where the model name is looked for last.

    Returns:
        ``(input_tokens, output_tokens, model)``, or ``None`` when no usage is found.

    Raises:
        InvalidUsage: A token count there is NaN, infinite, negative or above
            :data:`MAX_TOKENS` (the activity interceptor then charges the attempt at least
            its estimate instead, and the activity's result is returned unchanged).

    """
    if _is_scalar(result):
        return None
    usage = _field(result, "usage")
    if usage is None:
        completed = _completed_response(result)
        if completed is None:
            return None
        result, usage = completed, _field(completed, "usage")
        if usage is None:
            return None
    found_in = _first_number(usage, _INPUT_KEYS)
    found_out = _first_number(usage, _OUTPUT_KEYS)
    if found_in is None and found_out is None:
        return None
    problems = [
        problem
        for name, value in filter(None, (found_in, found_out))
        if (problem := amount_problem(f"usage.{name}", value, MAX_TOKENS)) is not None
    ]
    if problems:
        raise InvalidUsage("usage in the result refused: " + "; ".join(problems))
    model = None
    for name in _MODEL_KEYS:
        value = _field(result, name)
        if isinstance(value, str) and value:
            model = value[:MAX_MODEL_NAME]
            break
    if model is None:
        model = model_in_arguments(args)
    input_tokens = math.ceil(found_in[1]) if found_in else 0
    output_tokens = math.ceil(found_out[1]) if found_out else 0
    return input_tokens, output_tokens, model
