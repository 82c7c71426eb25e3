"""Graceful decisions short of a halt: downgrade the model, cap tokens, disable tools.

A :class:`Decision` is taken in workflow code from the policy's ``degrade`` rules (on the
run's remaining budget, or on a spend anomaly). It travels to every activity the run
dispatches in the governor's header (``current_decision()`` there returns it), and where
the rule says so, OpenAI-style arguments (``model``, ``max_tokens``) are rewritten on the
way in, so the activity needs no change at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Decision(BaseModel):
    """A degradation in force for a run's dispatches."""

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
    """Activity types refused while the decision holds."""
    rewrite_arguments: bool = True

    def model_for(self, requested: str) -> str:
        """The model to call instead of ``requested``."""
        return self.model_map.get(requested, requested)


def rewrite_arguments(args: Sequence[Any], decision: Decision) -> list[Any]:
    """Apply a decision to OpenAI-style activity arguments.

    Each argument that is a mapping, a dataclass or a pydantic model with a string
    ``model`` field gets it mapped through ``model_map``, and its ``max_tokens`` (or
    ``max_completion_tokens`` / ``max_output_tokens``) capped where it has one. Nothing
    is added that was not there; a model is rebuilt through its own validation; an
    argument that cannot be rebuilt is left as it was. Other arguments are untouched.
    """
    return [_rewrite(arg, decision) for arg in args]


def _rewrite(arg: Any, decision: Decision) -> Any:
    try:
        if isinstance(arg, Mapping):
            changes = _changes(dict(arg), decision)
            return {**arg, **changes} if changes else arg
        if isinstance(arg, BaseModel):
            data = arg.model_dump()
            changes = _changes(data, decision)
            return type(arg).model_validate({**data, **changes}) if changes else arg
        if dataclasses.is_dataclass(arg) and not isinstance(arg, type):
            fields = {f.name: getattr(arg, f.name) for f in dataclasses.fields(arg)}
            changes = _changes(fields, decision)
            return dataclasses.replace(arg, **changes) if changes else arg
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return arg
    return arg


def _changes(fields: dict[str, Any], decision: Decision) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    model = fields.get("model")
    if not isinstance(model, str):
        return changes
    if model in decision.model_map:
        changes["model"] = decision.model_map[model]
    cap = decision.max_tokens
    if cap is not None:
        for name in _TOKEN_FIELDS:
            value = fields.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
                changes[name] = cap
    return changes


__all__ = ["Decision", "rewrite_arguments"]
