"""Risk tiers and degrade rules that loosen what they should tighten, or never apply.

Risk tiers are meant to be stricter than the agent they apply in:

- a tier's ``max_cost_usd_per_task`` (or ``max_calls_per_task``, for a tier of tools that
  all count as tool calls) at or above what every run it applies in may spend at all
  never binds;
- a tier's ``loop_action`` weaker than the agent's ``loop_detection.action`` (``alert`` <
  ``throttle`` < ``terminate``) lets loops on the risky tools go on that the agent halts.

Degrade rules are taken first-applies-wins (``interceptors/_guard.py``):

- a rule that applies only when an earlier rule applies too is never taken;
- a rule taken with less budget left that caps fewer tokens or disables fewer tools than
  one taken with more left loosens as the budget runs out;
- a ``model_map`` to a model the ``models`` table prices higher makes calls dearer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..policy import AgentPolicy, DegradeRule, LoopDetection, Policy, RiskTier
from ._findings import Finding, FindingKind, Number, Severity
from ._limits import DEFAULTS, Bound, at, say, task_scope_of
from ._solver import Smt

_ACTION_STRENGTH = {"alert": 0, "throttle": 1, "terminate": 2}


def tier_findings(policy: Policy, bounds: list[Bound], smt: Smt) -> list[Finding]:
    """Risk tiers whose limits never bind, or whose loop action is weaker than the agent's."""
    findings: list[Finding] = []
    for name, tier in policy.risk_tiers.items():
        scopes = _tier_task_scopes(policy, name)
        if tier.max_cost_usd_per_task is not None:
            findings += _dead_tier_limit(
                name,
                "max_cost_usd_per_task",
                tier.max_cost_usd_per_task,
                "cost_usd",
                scopes,
                bounds,
                smt,
            )
        if tier.max_calls_per_task is not None and _tier_calls_are_tool_calls(policy, name):
            findings += _dead_tier_limit(
                name,
                "max_calls_per_task",
                tier.max_calls_per_task,
                "tool_calls",
                scopes,
                bounds,
                smt,
            )
        findings += _weaker_loop_action(policy, name, tier)
    return findings


def _tier_users(policy: Policy, tier: str) -> tuple[list[str], list[str]]:
    """The agent entries and the tool entries naming ``tier``."""
    agents = [name for name, agent in policy.agents.items() if agent.risk_tier == tier]
    tools = [name for name, tool in policy.tools.items() if tool.risk_tier == tier]
    return agents, tools


def _tier_agents(policy: Policy, tier: str) -> list[str | None]:
    """The agent entries whose runs the tier applies in (``None``: unlisted workflows).

    An agent's tier applies to its own dispatches; a tool's tier to the tool's calls in
    any run.
    """
    agents, tools = _tier_users(policy, tier)
    if tools:
        return [*policy.agents, None]
    return list(agents)


def _tier_task_scopes(policy: Policy, tier: str) -> set[str]:
    return {
        task_scope_of(policy, agent) if agent is not None else DEFAULTS
        for agent in _tier_agents(policy, tier)
    }


def _tier_calls_are_tool_calls(policy: Policy, tier: str) -> bool:
    """Whether every dispatch the tier counts is also a tool call (tools only, all counted)."""
    agents, tools = _tier_users(policy, tier)
    return bool(tools) and not agents and all(policy.tools[t].counts_as_tool_call for t in tools)


def _dead_tier_limit(
    tier: str,
    field: str,
    value: float,
    resource: str,
    scopes: set[str],
    bounds: list[Bound],
    smt: Smt,
) -> list[Finding]:
    """A tier limit no run it applies in can reach: each run's own limit stops it first."""
    if not scopes:
        return []
    caps: list[Bound] = []
    for scope in sorted(scopes):
        own = [
            b
            for b in bounds
            if b.scope.kind == "task"
            and b.scope.name == scope
            and b.resource == resource
            and b.terminate
        ]
        if not own:
            return []  # a run with no limit of its own: the tier binds there
        caps.append(min(own, key=lambda b: b.ceiling))
    tier_spend = smt.amount("tier_spend", resource != "cost_usd")
    loosest = max(caps, key=lambda b: b.ceiling)
    maximum = smt.maximum(tier_spend, [tier_spend >= 0, tier_spend <= loosest.ceiling])
    if maximum is None or maximum >= value:
        return []
    return [
        Finding(
            kind=FindingKind.LOOSENING_RULE,
            severity=Severity.WARNING,
            path=at("risk_tiers", tier, field),
            message=(
                f"never binds: it is meant to be stricter, but every run it applies in stops "
                f"at its own limit first ({loosest.path}: {say(loosest.ceiling, resource)}), "
                f"so the tier's {_tier_unit(resource)} reach at most {say(maximum, resource)}, "
                f"under its {say(value, resource)}"
            ),
            witness={"reachable_max": maximum, "limit": value, "run_limit": loosest.ceiling},
            related=[b.path for b in caps],
        )
    ]


def _tier_unit(resource: str) -> str:
    return "dollars" if resource == "cost_usd" else "calls"


def _loop_detection_on(loop: LoopDetection) -> bool:
    """Whether the agent runs the loop detector whose action a tier can replace."""
    return any(
        value is not None
        for value in (
            loop.signature_window,
            loop.max_cycle_repeats,
            loop.max_consecutive_failures,
            loop.max_iterations,
        )
    )


def _weaker_loop_action(policy: Policy, name: str, tier: RiskTier) -> list[Finding]:
    if tier.loop_action is None:
        return []
    weaker = [
        (agent, policy.agents[agent].loop_detection.action)
        for agent in _tier_agents(policy, name)
        if agent is not None
        and _loop_detection_on(policy.agents[agent].loop_detection)
        and _ACTION_STRENGTH[tier.loop_action]
        < _ACTION_STRENGTH[policy.agents[agent].loop_detection.action]
    ]
    if not weaker:
        return []
    agent, action = weaker[0]
    return [
        Finding(
            kind=FindingKind.LOOSENING_RULE,
            severity=Severity.ERROR,
            path=at("risk_tiers", name, "loop_action"),
            message=(
                f"loosens instead of tightening: a loop on the tier's dispatches gets "
                f"{tier.loop_action!r}, where the agent's own loop_detection.action says "
                f"{action!r} (agents: {', '.join(a for a, _ in weaker)})"
            ),
            witness={"agent": agent, "agent_action": action, "tier_action": tier.loop_action},
            related=[at("agents", a, "loop_detection", "action") for a, _ in weaker],
        )
    ]


# -- degrade rules ------------------------------------------------------------------------


def degrade_findings(policy: Policy, smt: Smt) -> list[Finding]:
    """Degrade rules never taken, loosening as the budget runs out, or to dearer models."""
    findings: list[Finding] = []
    for name, agent in policy.agents.items():
        findings += _shadowed_rules(name, agent, smt)
        findings += _loosening_rules(name, agent, smt)
        findings += _dearer_models(policy, name, agent, smt)
    return findings


class _Triggers:
    """The state a degrade rule is taken in: the budget fraction left, and anomaly."""

    def __init__(self, smt: Smt, suffix: str = "") -> None:
        z3 = smt.z3
        self.z3 = z3
        self.remaining = z3.Real(f"remaining{suffix}")
        self.anomalous = z3.Bool(f"anomalous{suffix}")
        self.domain = [self.remaining >= 0, self.remaining <= 1]

    def applies(self, rule: DegradeRule) -> Any:
        """The rule's trigger, as ``current_decision`` evaluates it."""
        options = []
        if rule.when_anomalous:
            options.append(self.anomalous)
        if rule.when_remaining_below is not None:
            options.append(self.remaining < self.z3.RealVal(rule.when_remaining_below))
        return self.z3.Or(*options)

    def taken(self, rules: Sequence[DegradeRule], index: int) -> Any:
        """Rule ``index`` applies and no earlier rule does (first applies wins)."""
        earlier = [self.z3.Not(self.applies(rule)) for rule in rules[:index]]
        return self.z3.And(self.applies(rules[index]), *earlier)


def _first_taken(rules: Sequence[DegradeRule], remaining: float, anomalous: bool) -> int | None:
    for index, rule in enumerate(rules):
        below = rule.when_remaining_below
        if (rule.when_anomalous and anomalous) or (below is not None and remaining < below):
            return index
    return None


def _shadowed_rules(name: str, agent: AgentPolicy, smt: Smt) -> Iterator[Finding]:
    rules = agent.degrade
    for index in range(1, len(rules)):
        state = _Triggers(smt)
        if smt.model([*state.domain, state.taken(rules, index)]) is not None:
            continue
        model = smt.model([*state.domain, state.applies(rules[index])], state.remaining)
        remaining = float(model[0]) if model is not None else 0.0
        anomalous = bool(rules[index].when_anomalous)
        earlier = _first_taken(rules, remaining, anomalous)
        yield Finding(
            kind=FindingKind.DEAD_RULE,
            severity=Severity.WARNING,
            path=at("agents", name, "degrade", index),
            message=(
                f"never taken: whenever it applies an earlier rule applies too and the first "
                f"wins (with {remaining:.0%} of the budget left"
                + (", anomalous" if anomalous else "")
                + f", degrade[{earlier}] is taken)"
            ),
            witness={"remaining": remaining, "anomalous": anomalous, "taken": earlier or 0},
            related=[at("agents", name, "degrade", earlier or 0)],
        )


def _looser(deeper: DegradeRule, milder: DegradeRule) -> list[str]:
    """How the rule taken with less budget left is looser than the one taken with more."""
    loosened = []
    if milder.max_tokens is not None and (
        deeper.max_tokens is None or deeper.max_tokens > milder.max_tokens
    ):
        loosened.append(
            f"max_tokens {deeper.max_tokens or 'uncapped'} instead of {milder.max_tokens}"
        )
    enabled = sorted(set(milder.disable_tools) - set(deeper.disable_tools))
    if enabled:
        loosened.append(f"{', '.join(enabled)} enabled again")
    return loosened


def _loosening_rules(name: str, agent: AgentPolicy, smt: Smt) -> Iterator[Finding]:
    rules = agent.degrade
    for deep in range(len(rules)):
        for mild in range(len(rules)):
            loosened = _looser(rules[deep], rules[mild])
            if deep == mild or not loosened:
                continue
            deeper, milder = _Triggers(smt, "_deeper"), _Triggers(smt, "_milder")
            model = smt.model(
                [
                    *deeper.domain,
                    *milder.domain,
                    deeper.remaining < milder.remaining,
                    smt.z3.Not(deeper.anomalous),
                    smt.z3.Not(milder.anomalous),
                    deeper.taken(rules, deep),
                    milder.taken(rules, mild),
                ],
                deeper.remaining,
                milder.remaining,
            )
            if model is None:
                continue
            yield _loosening(name, deep, mild, loosened, model)


def _loosening(
    name: str, deep: int, mild: int, loosened: list[str], model: list[Number]
) -> Finding:
    less, more = float(model[0]), float(model[1])
    return Finding(
        kind=FindingKind.LOOSENING_RULE,
        severity=Severity.WARNING,
        path=at("agents", name, "degrade", deep),
        message=(
            f"loosens as the budget runs out: with {less:.0%} left degrade[{deep}] is taken "
            f"({'; '.join(loosened)}), looser than degrade[{mild}] taken with {more:.0%} left"
        ),
        witness={
            "remaining": less,
            "taken": deep,
            "remaining_earlier": more,
            "taken_earlier": mild,
        },
        related=[at("agents", name, "degrade", mild)],
    )


def _dearer_models(policy: Policy, name: str, agent: AgentPolicy, smt: Smt) -> Iterator[Finding]:
    z3 = smt.z3
    for index, rule in enumerate(agent.degrade):
        for requested, used in rule.model_map.items():
            before, after = policy.models.get(requested), policy.models.get(used)
            if before is None or after is None:
                continue
            tokens_in, tokens_out = z3.Int("input_tokens"), z3.Int("output_tokens")

            def cost(price: Any, a: Any = tokens_in, b: Any = tokens_out) -> Any:
                per_in, per_out = z3.RealVal(price.input_per_1k), z3.RealVal(price.output_per_1k)
                return a * per_in / 1000 + b * per_out / 1000

            model = smt.model(
                [
                    tokens_in >= 0,
                    tokens_out >= 0,
                    tokens_in + tokens_out == 1000,
                    cost(after) > cost(before),
                ],
                tokens_in,
                tokens_out,
            )
            if model is None:
                continue
            count_in, count_out = int(model[0]), int(model[1])
            was = policy.cost_usd(requested, count_in, count_out) or 0.0
            now = policy.cost_usd(used, count_in, count_out) or 0.0
            yield Finding(
                kind=FindingKind.LOOSENING_RULE,
                severity=Severity.ERROR,
                path=at("agents", name, "degrade", index, "model_map", requested),
                message=(
                    f"degrades to a dearer model: a call of {count_in:,} input and "
                    f"{count_out:,} output tokens costs ${now:.6g} with {used} instead of "
                    f"${was:.6g} with {requested} (models table)"
                ),
                witness={
                    "input_tokens": count_in,
                    "output_tokens": count_out,
                    "cost_before": was,
                    "cost_after": now,
                },
                related=[at("models", requested), at("models", used)],
            )
