"""Graceful decisions short of a halt: downgrade the model, cap tokens, disable tools.

A :class:`Degradation` is taken in workflow code from the policy's ``degrade`` rules (on
the run's remaining budget, or on a spend anomaly). It travels to every activity the run
dispatches in the governor's header (``current_degradation()`` there returns it), and where
the rule says so, the arguments of model calls (OpenAI-style ``model`` / ``max_tokens``, the
OpenAI Agents SDK's and pydantic-ai's ``model_name`` / ``model_id`` and nested
``model_settings.max_tokens``) are rewritten on the way in, so the activity needs no change
at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_FRAMEWORK_MODEL_FIELDS = ("model_name", "model_id")
"""The model fields of the OpenAI Agents SDK's and pydantic-ai's model-call inputs."""
_SETTINGS_FIELD = "model_settings"
_DEFAULT_MODEL = "default"
"""The ``model_map`` key for a framework call that names no model (the agent's default)."""


class Degradation(BaseModel):
    """A degradation in force for a run's dispatches: what a ``degrade`` rule decided.

    Not to be confused with :class:`~temporal_governor.core.decisions.DecisionRecord`, the
    audit record of every governance decision (a change of degradation is recorded as a
    ``degrade`` record).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: int
    """Index of the ``degrade`` rule taken."""
    reason: str
    """Why, e.g. ``12% of max_tokens_per_task remains`` or ``anomalous spend``."""
    model_map: dict[str, str] = Field(default_factory=dict)
    """Requested model -> the model to use instead."""
    max_tokens: int | None = None
    """Cap on ``max_tokens`` of model calls."""
    disabled_tools: list[str] = Field(default_factory=list)
    """Activity types refused while the degradation holds."""
    rewrite_arguments: bool = True
    """Whether model-call arguments are rewritten on the way in (else the activity reads
    the degradation itself)."""

    def model_for(self, requested: str) -> str:
        """The model to call instead of ``requested``."""
        return self.model_map.get(requested, requested)


Decision = Degradation
"""Deprecated name of :class:`Degradation` (before issue #12); goes in the next release."""


def rewrite_arguments(args: Sequence[Any], decision: Degradation) -> list[Any]:
    """Apply a degradation to the arguments of a model call.

    Each argument that is a mapping, a dataclass or a pydantic model naming a model in a
    ``model``, ``model_name`` (the OpenAI Agents SDK's ``invoke_model_activity`` input) or
    ``model_id`` field (pydantic-ai's ``agent__<name>__model_request`` input) is a model
    call:

    - its model is mapped through ``model_map``. ``model_name`` / ``model_id`` may be
      ``None`` (the agent's own default model), which the key ``default`` maps;
    - a top-level ``max_tokens`` (or ``max_completion_tokens`` / ``max_output_tokens``) is
      capped where it has one; nothing is added there (raw OpenAI-style requests: the
      Responses API and o-series models refuse ``max_tokens``);
    - a ``model_settings`` field (the frameworks' own settings, which each framework
      translates for the provider) gets ``max_tokens`` capped, and set to the cap where
      it had none: a mapping (pydantic-ai), a dataclass (the OpenAI Agents SDK's
      ``ModelSettings``), a pydantic model, or ``None`` (pydantic-ai: no settings) for
      which ``{"max_tokens": cap}`` is sent.

    A model is rebuilt through its own validation; an argument that cannot be rebuilt is
    left as it was. Other arguments are untouched.
    """
    return [_rewrite(arg, decision) for arg in args]


def _fields_of(arg: Any) -> dict[str, Any] | None:
    """The fields of a mapping, a dataclass instance or a pydantic model, else ``None``."""
    if isinstance(arg, Mapping):
        return dict(arg)
    if isinstance(arg, BaseModel):
        return {name: getattr(arg, name) for name in type(arg).model_fields}
    if dataclasses.is_dataclass(arg) and not isinstance(arg, type):
        return {f.name: getattr(arg, f.name) for f in dataclasses.fields(arg)}
    return None


def _replaced(arg: Any, changes: dict[str, Any]) -> Any:
    """``arg`` with ``changes`` applied, rebuilt the way its kind is (may raise)."""
    if not changes:
        return arg
    if isinstance(arg, Mapping):
        return {**arg, **changes}
    if isinstance(arg, BaseModel):
        return type(arg).model_validate({**arg.model_dump(), **changes})
    return dataclasses.replace(arg, **changes)


def _rewrite(arg: Any, decision: Degradation) -> Any:
    try:
        fields = _fields_of(arg)
        if fields is None:
            return arg
        return _replaced(arg, _changes(fields, decision))
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return arg


def _changes(fields: dict[str, Any], decision: Degradation) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    key = _model_key(fields)
    if key is None:
        return changes
    requested = fields[key]
    mapped = decision.model_map.get(_DEFAULT_MODEL if requested is None else requested)
    if mapped is not None and mapped != requested:
        changes[key] = mapped
    cap = decision.max_tokens
    if cap is not None:
        for name in _TOKEN_FIELDS:
            if _above(fields.get(name), cap):
                changes[name] = cap
        if _SETTINGS_FIELD in fields:
            settings = _capped_settings(fields[_SETTINGS_FIELD], cap)
            if settings is not fields[_SETTINGS_FIELD]:
                changes[_SETTINGS_FIELD] = settings
    return changes


def _model_key(fields: dict[str, Any]) -> str | None:
    """Which field names the model of a model call, or ``None`` for other arguments."""
    if isinstance(fields.get("model"), str):
        return "model"
    for key in _FRAMEWORK_MODEL_FIELDS:
        if key in fields and (fields[key] is None or isinstance(fields[key], str)):
            return key
    return None


def _above(value: Any, cap: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > cap


def _capped_settings(settings: Any, cap: int) -> Any:
    """A framework's model settings with ``max_tokens`` at most ``cap`` (set where unset)."""
    if settings is None:
        return {"max_tokens": cap}
    fields = _fields_of(settings)
    if fields is None or ("max_tokens" not in fields and not isinstance(settings, Mapping)):
        return settings  # not settings we know: leave them
    current = fields.get("max_tokens")
    if isinstance(current, int | float) and not isinstance(current, bool) and current <= cap:
        return settings
    return _replaced(settings, {"max_tokens": cap})


__all__ = ["Degradation", "rewrite_arguments"]
