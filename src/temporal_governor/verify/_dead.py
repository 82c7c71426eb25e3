"""Limits that can never bind, and ``hard_ceiling`` headroom no override can use.

For each limit the solver computes the most its counter can hold while every tighter
``terminate`` limit counting the same units passes (:func:`reach`). Below the limit
itself, the limit never binds (a dead rule); below its ``hard_ceiling``, an override up to
that ceiling can never be spent (an unreachable override).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..policy import Policy
from ._findings import Finding, FindingKind, Number, Severity
from ._limits import Bound, TenantContext, amount, cap_on, counts_within, say, tenant_contexts
from ._solver import Smt


@dataclass(frozen=True)
class Reach:
    """The most a bound's counter can hold, and the bound that holds it there."""

    maximum: Number
    """The largest amount in one of the bound's windows (or in total) that passes."""
    blocker: Bound
    """The tighter terminate bound that stops it there."""
    cap: float
    """What ``blocker`` allows of this counter (its hard ceiling, times the windows it
    spans)."""
    context: TenantContext | None
    """For a task's bound: the tenant situation this holds in."""


def dead_and_override_findings(policy: Policy, bounds: list[Bound], smt: Smt) -> list[Finding]:
    """Dead limits (:attr:`FindingKind.DEAD_RULE`) and unreachable override ceilings."""
    findings: list[Finding] = []
    for inner in bounds:
        for found in _reaches(policy, inner, bounds, smt):
            if found.maximum < inner.limit:
                findings.append(_dead(inner, found, smt))
            elif found.maximum < inner.ceiling:
                findings.append(_unreachable_override(inner, found, smt))
    return findings


def reach(
    inner: Bound, bounds: list[Bound], context: TenantContext | None, smt: Smt
) -> Reach | None:
    """The most ``inner``'s counter can hold while every other terminate bound passes.

    Each other bound is taken at its hard ceiling: an override may lift it that far, and
    then ``inner`` may bind. So a limit is dead only if it cannot bind whatever the
    overrides, and an override ceiling unreachable only if no other override reaches it.

    Args:
        inner: The bound whose counter is looked at.
        bounds: Every bound of the policy.
        context: For a task's bound, the tenant situation of the run.
        smt: The solver.

    Returns:
        The maximum and the tightest bound behind it, or ``None`` when no other bound
        caps the counter.

    """
    caps = [
        (outer, cap)
        for outer in bounds
        if outer is not inner and outer.terminate and counts_within(outer, inner, context)
        for cap in [cap_on(outer, inner, overridden=True)]
        if cap is not None
    ]
    if not caps:
        return None
    held = smt.amount("held", inner.integer)
    maximum = smt.maximum(held, [held >= 0, *(held <= cap for _, cap in caps)])
    if maximum is None:
        return None
    blocker, cap = min(caps, key=lambda pair: pair[1])
    return Reach(maximum, blocker, cap, context)


def passing_spend(smt: Smt, above: float, at_most: float, integer: bool) -> Number | None:
    """An amount above ``above`` and at most ``at_most`` (whole when it can be)."""
    for whole in (True, False) if integer else (False,):
        spend = smt.amount("spend", whole)
        model = smt.model([spend > above, spend <= at_most], spend)
        if model is not None:
            return model[0]
    return None


def _reaches(policy: Policy, inner: Bound, bounds: list[Bound], smt: Smt) -> Iterator[Reach]:
    """The reach of ``inner``: once, or for a task's bound once per tenant entry.

    A task's bound may be dead for the runs of one tenant and alive for the others; for
    each tenant entry the situation without an owner is tried first, and the one with an
    owner (its ``per_owner`` bounds count too) only when that finds nothing.
    """
    if inner.scope.kind != "task":
        found = reach(inner, bounds, None, smt)
        if found is not None:
            yield found
        return
    tried: set[str | None] = set()
    for context in tenant_contexts(policy):
        if context.entry in tried:
            continue
        found = reach(inner, bounds, context, smt)
        if found is not None and found.maximum < inner.ceiling:
            tried.add(context.entry)
            yield found


def _where(found: Reach) -> str:
    return f" for {found.context.describe()}" if found.context is not None else ""


def _witness(inner: Bound, found: Reach, spend: Number | None) -> dict[str, Any]:
    witness: dict[str, Any] = {
        "reachable_max": found.maximum,
        "limit": inner.limit,
        "tighter_limit": found.blocker.limit,
        "tighter_cap": found.cap,
    }
    if found.blocker.ceiling != found.blocker.limit:
        witness["tighter_hard_ceiling"] = found.blocker.ceiling
    if spend is not None:
        witness["spend"] = spend
    if found.context is not None:
        witness["tenant_entry"] = found.context.entry or ""
        witness["with_owner"] = found.context.owner
    if inner.window_s is not None and found.blocker.window_s is not None:
        windows = inner.window_s / found.blocker.window_s
        if windows > 1:
            witness["windows"] = int(windows)
    return witness


def _holds(inner: Bound, found: Reach) -> str:
    """``tenants.acme.quotas.max_tokens (1,000 in total) holds ... to at most 1,000``."""
    blocker, resource = found.blocker, inner.resource
    spans = ""
    outer_window, inner_window = blocker.window_s, inner.window_s
    if outer_window is not None and inner_window is not None and inner_window > outer_window:
        spans = f", {inner_window / outer_window:g} of its windows in one"
    overrides = ""
    if blocker.ceiling != blocker.limit:
        overrides = f", overrides up to {say(blocker.ceiling, resource)}"
    return (
        f"{blocker.path} ({amount(blocker.limit, blocker.resource)} {blocker.period}{overrides}"
        f"{spans}) holds {inner.scope.describe()} to at most "
        f"{amount(found.maximum, inner.resource)} {inner.period}"
    )


def _dead(inner: Bound, found: Reach, smt: Smt) -> Finding:
    spend = passing_spend(smt, found.maximum, inner.limit, inner.integer)
    example = ""
    if spend is not None:
        example = (
            f"; spending {amount(spend, inner.resource)} {inner.period} passes "
            f"{inner.path} but {found.blocker.path} refuses it"
        )
    return Finding(
        kind=FindingKind.DEAD_RULE,
        severity=Severity.WARNING,
        path=inner.path,
        message=(
            f"never binds{_where(found)}: {_holds(inner, found)}, under its "
            f"{say(inner.limit, inner.resource)}{example}"
        ),
        witness=_witness(inner, found, spend),
        related=[found.blocker.path],
    )


def _unreachable_override(inner: Bound, found: Reach, smt: Smt) -> Finding:
    spend = passing_spend(smt, found.maximum, inner.ceiling, inner.integer)
    witness = _witness(inner, found, spend)
    witness["hard_ceiling"] = inner.ceiling
    return Finding(
        kind=FindingKind.UNREACHABLE_OVERRIDE,
        severity=Severity.WARNING,
        path=f"{inner.path}.hard_ceiling",
        message=(
            f"an override up to {say(inner.ceiling, inner.resource)} can never be spent"
            f"{_where(found)}: {_holds(inner, found)}"
            + (
                f"; an override to {say(inner.ceiling, inner.resource)} would pass "
                f"{amount(spend, inner.resource)} but {found.blocker.path} "
                "refuses it"
                if spend is not None
                else ""
            )
        ),
        witness=witness,
        related=[found.blocker.path],
    )
