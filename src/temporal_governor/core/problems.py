"""The root of the governor's errors and the policy's problems: pure, no Temporal.

:mod:`temporal_governor.errors` re-exports these beside the failure types that cross the
wire (``ApplicationError`` subclasses); they live here so that the pure core and the
policy, which raise them, do not depend on the Temporal SDK.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


def validation_problems(error: ValidationError, whole: str = "message") -> str:
    """A pydantic error as one line: ``field.path: problem; ...`` (``whole`` for the root)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}"
        for e in error.errors(include_url=False)
    )


class GovernorError(Exception):
    """Root of every error the governor raises to its users."""


class PolicyIssue(BaseModel):
    """One problem found in a policy: where it is, what was there, what was expected."""

    model_config = ConfigDict(frozen=True)

    source: str
    """The file the policy came from, or ``<text>`` / ``<dict>``."""
    path: str
    """Dotted path of the field, e.g. ``agents.planner.quotas.max_tokens_per_task``."""
    value: Any = None
    """The offending value as it was given."""
    expected: str
    """What would have been accepted."""

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: got {self.value!r}; expected {self.expected}"


class PolicyError(GovernorError, ValueError):
    """A policy could not be loaded; the message names file, field, value and expectation.

    Args:
        issues: Every problem found, in document order.

    """

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        lines = [str(issue) for issue in issues]
        head = "invalid governance policy" + (f" ({len(lines)} problems)" if len(lines) > 1 else "")
        super().__init__(head + ":\n  " + "\n  ".join(lines))


__all__ = ["GovernorError", "PolicyError", "PolicyIssue", "validation_problems"]
