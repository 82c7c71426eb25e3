"""A governed run's detectors, throttles, priorities, risk tiers and degradation.

Everything here runs in workflow code on the run's deterministic state: dispatches and
their results as history delivers them, workflow time, and baselines read from the
ledger through a local activity (its result is in history). A replay reaches the same
verdicts, waits and decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import temporalio.common
import temporalio.workflow
from temporalio.exceptions import ApplicationError

from ..core.accounting import EventKind, Refusal
from ..core.decisions import Dispatch
from ..core.degradation import Degradation
from ..core.detectors import (
    AnomalyRule,
    LoopDetector,
    LoopRules,
    LoopState,
    SpendBaseline,
    TokenBucket,
    Verdict,
    agent_cycle,
    call_signature,
    predictive_delay,
)
from ..errors import TOOL_DISABLED, BudgetExceeded, RunawayLoop
from ..policy import AgentPolicy, PriorityClass, RiskTier
from ._ports import GuardHost

PRIORITY_KEYS: dict[PriorityClass, int] = {
    "critical": 1,
    "high": 2,
    "normal": 3,
    "low": 4,
    "background": 5,
}
"""Policy priority class -> Temporal ``priority_key`` (1 runs first; servers default to 5
levels, 3 being the default)."""

_METRICS = ("tokens_per_run", "cost_usd_per_run", "tokens_per_minute")
_MIN_RATE_WINDOW_S = 60.0
"""A per-minute rate is judged (and learnt) only once a run has lasted this long."""


class RunGuard:
    """The guards of one run, consulted before every dispatch and after every result."""

    def __init__(self, run: GuardHost) -> None:
        self.run = run
        policy = run.policy
        entry = policy.agent_for(run.agent)
        self.agent: AgentPolicy | None = entry[1] if entry else None
        loop = self.agent.loop_detection if self.agent else None
        self.loop = loop
        self.detector: LoopDetector | None = None
        carried = run.context.guard_state or {}
        if loop is not None and (
            loop.signature_window
            or loop.max_cycle_repeats
            or loop.max_consecutive_failures
            or loop.max_iterations
        ):
            state = carried.get("loop")
            self.detector = LoopDetector(
                LoopRules(
                    signature_window=loop.signature_window,
                    max_repeats=loop.max_repeats,
                    max_cycle_length=loop.max_cycle_length,
                    max_cycle_repeats=loop.max_cycle_repeats,
                    max_consecutive_failures=loop.max_consecutive_failures,
                    max_iterations=loop.max_iterations,
                    action=loop.action,
                ),
                LoopState.model_validate(state) if state else None,
            )
        throttle = self.agent.throttle if self.agent else None
        self.bucket = TokenBucket(throttle.rate_per_sec, throttle.burst) if throttle else None
        if self.bucket is not None and carried.get("bucket"):
            self.bucket = TokenBucket.from_state(carried["bucket"])
        self.tool_buckets: dict[str, TokenBucket | None] = {}
        """Per activity type, its tool's throttle bucket (``None``: the tool has none)."""
        self._tiers: dict[tuple[str, str], tuple[str | None, RiskTier | None]] = {}
        """Per dispatch kind and target: its risk tier's name and rules (policy look-ups
        done once per target; the run's policy does not change)."""
        self._classes: dict[str, PriorityClass | None] = {}
        """Per activity type: its tool's priority class."""
        self.tier_calls: dict[str, int] = {}
        self.tier_cost: dict[str, float] = {}
        self.tier_failures: dict[str, int] = {}
        self.anomaly = self.agent.anomaly if self.agent else None
        self.baselines: dict[str, SpendBaseline] = {}
        self.anomalous: Verdict | None = None
        self.decision: Degradation | None = None
        self._alerted: set[str] = set()
        self._pending_delay = 0.0
        """A ``throttle`` verdict reached after a result, applied to the next dispatch."""
        self.tier_calls.update(carried.get("tier_calls", {}))
        self.tier_cost.update(carried.get("tier_cost", {}))
        self.tier_failures.update(carried.get("tier_failures", {}))
        self.chain_start: float = float(carried.get("chain_start", run.info.start_time.timestamp()))
        """When the run's continue-as-new chain started (epoch seconds): rates and the
        predictive throttle measure spend carried over from earlier runs against it."""

    def inherit(self) -> dict[str, Any] | None:
        """What a child inherits: the recent call signatures and tools.

        So a loop that spans sub-agents (each repeating its parent's call) is seen.
        """
        if self.detector is None:
            return None
        state = self.detector.state()
        loop = {"signatures": state.signatures, "targets": state.targets}
        return {"loop": LoopState.model_validate(loop).model_dump(mode="json")}

    def carry(self) -> dict[str, Any] | None:
        """The state a continue-as-new hands to the next run of the chain."""
        state: dict[str, Any] = {}
        if self.detector is not None:
            state["loop"] = self.detector.state().model_dump(mode="json")
        if self.bucket is not None:
            state["bucket"] = self.bucket.state()
        state.update(
            tier_calls=self.tier_calls,
            tier_cost=self.tier_cost,
            tier_failures=self.tier_failures,
            chain_start=self.chain_start,
        )
        return state

    # -- before a dispatch ------------------------------------------------------------------

    def admit(self, dispatch: Dispatch, args: Sequence[Any]) -> float:
        """Judge a dispatch before it is reserved.

        Args:
            dispatch: The dispatch; what the guards decide is recorded under its key.
            args: Its arguments (a loop is a call repeated with the same arguments).

        Raises:
            ApplicationError: ``ToolDisabled``, the tool is disabled by a degrade rule.
            BudgetExceeded: A risk tier's limit, a loop or an anomaly halts the run.

        Returns:
            Seconds the dispatch must wait first (throttles, ``throttle`` actions).
        """
        kind, target = dispatch.kind, dispatch.target
        decision = self.current_decision()
        if kind == "activity" and decision is not None and target in decision.disabled_tools:
            raise ApplicationError(
                f"{target} is disabled for now: {decision.reason}",
                {"decision": decision.model_dump(mode="json")},
                type=TOOL_DISABLED,
                non_retryable=True,
            )
        tier_name, tier = self._tier(dispatch)
        if tier is not None:
            self._check_tier(tier_name, tier, dispatch)
        wait = 0.0
        if kind == "child" and self.loop is not None and self.loop.max_agent_visits:
            chain = [link.agent for link in [*self.run.context.chain, self.run.link]]
            verdict = agent_cycle(
                chain, target, self.loop.max_agent_visits, action=self.loop.action
            )
            if verdict is not None:
                wait += self._act(verdict, dispatch, loop=True)
        if self.detector is not None:
            verdict = self.detector.on_dispatch(target, call_signature(target, args))
            if verdict is not None:
                if tier is not None and tier.loop_action is not None:
                    verdict = verdict.model_copy(update={"action": tier.loop_action})
                wait += self._act(verdict, dispatch, loop=True)
        if self.anomalous is not None and self.anomalous.action == "throttle":
            wait += self.anomaly.throttle_delay if self.anomaly else 0.0
        wait += self._pending_delay
        self._pending_delay = 0.0
        wait = max(wait, self._predictive_delay())
        if tier_name is not None:
            self.tier_calls[tier_name] = self.tier_calls.get(tier_name, 0) + 1
        self._log_wait(wait, dispatch)
        return wait

    def pace(self, dispatch: Dispatch) -> float:
        """Take a token from the agent's and the tool's bucket for a dispatch starting now.

        Called once the dispatch may start (after a pause or backpressure let it), so that
        dispatches held by a pause do not all go at once when it ends.

        Returns:
            Seconds to wait before starting (0: go now).
        """
        buckets = [b for b in (self.bucket, self._bucket_for(dispatch)) if b is not None]
        if not buckets:
            return 0.0
        now = temporalio.workflow.now().timestamp()
        wait = 0.0
        for bucket in buckets:
            wait = max(wait, bucket.take(now))
        self._log_wait(wait, dispatch)
        return wait

    def _log_wait(self, wait: float, dispatch: Dispatch) -> None:
        if wait > 0:
            self.run.ledger.log_detector(
                "throttle",
                dispatch.key,
                "throttle",
                f"{dispatch.label} held back {wait:.3f} s",
                observed=wait,
            )
            self.run.log_events()

    def _tier(self, dispatch: Dispatch) -> tuple[str | None, RiskTier | None]:
        """The risk tier of a dispatch's target (looked up once per target per run)."""
        found = self._tiers.get((dispatch.kind, dispatch.target))
        if found is None:
            tiers = self.run.policy.risk_tiers
            name: str | None = None
            if dispatch.kind == "activity":
                tool = self.run.policy.tool_for(dispatch.target)
                name = tool[1].risk_tier if tool else None
            if name is None and self.agent is not None:
                name = self.agent.risk_tier
            found = name, (tiers.get(name) if name is not None else None)
            self._tiers[(dispatch.kind, dispatch.target)] = found
        return found

    def _check_tier(self, name: str | None, tier: RiskTier, dispatch: Dispatch) -> None:
        calls = self.tier_calls.get(name or "", 0)
        if tier.max_calls_per_task is not None and calls + 1 > tier.max_calls_per_task:
            self._refuse(
                dispatch,
                f"risk_tiers.{name}.max_calls_per_task",
                "tool_calls",
                calls + 1,
                tier.max_calls_per_task,
                calls,
            )
        spent = self.tier_cost.get(name or "", 0.0)
        if tier.max_cost_usd_per_task is not None and spent >= tier.max_cost_usd_per_task:
            self._refuse(
                dispatch,
                f"risk_tiers.{name}.max_cost_usd_per_task",
                "cost_usd",
                spent,
                tier.max_cost_usd_per_task,
                spent,
            )

    def _refuse(
        self,
        dispatch: Dispatch,
        limit: str,
        resource: str,
        observed: float,
        ceiling: float,
        committed: float,
    ) -> None:
        refusal = Refusal(
            limit=limit,
            resource=resource,
            scope=self.run.scope,
            observed=observed,
            ceiling=ceiling,
            committed=committed,
            overage=0.0,
        )
        details = self.run.refused(refusal, dispatch.label)
        raise self.run.stop(BudgetExceeded(details), refused=dispatch.key)

    def _bucket_for(self, dispatch: Dispatch) -> TokenBucket | None:
        if dispatch.kind != "activity":
            return None
        target = dispatch.target
        if target not in self.tool_buckets:
            tool = self.run.policy.tool_for(target)
            throttle = tool[1].throttle if tool else None
            self.tool_buckets[target] = (
                TokenBucket(throttle.rate_per_sec, throttle.burst) if throttle else None
            )
        return self.tool_buckets[target]

    def _act(self, verdict: Verdict, dispatch: Dispatch, loop: bool) -> float:
        """Carry out a verdict: halt, or hold the dispatch back, or report it once."""
        kind: EventKind = "loop" if loop else "anomaly"
        if verdict.action == "terminate":
            self._log_verdict(kind, verdict, dispatch.key)
            raise self._halt(verdict, dispatch, loop=loop)
        first = verdict.detector not in self._alerted
        self._alerted.add(verdict.detector)
        if first:
            self._log_verdict(kind, verdict, dispatch.key)
            temporalio.workflow.logger.warning(
                "governance %s (%s): %s", kind, verdict.action, verdict.message
            )
        if verdict.action == "throttle":
            source = self.loop if loop else self.anomaly
            return float(source.throttle_delay) if source is not None else 0.0
        return 0.0

    def _log_verdict(self, kind: EventKind, verdict: Verdict, key: str) -> None:
        """A ``loop`` or ``anomaly`` event with the verdict's message and numbers."""
        observed, ceiling = evidence_numbers(verdict.evidence)
        self.run.ledger.log_detector(
            kind, key, verdict.detector, verdict.message, observed, ceiling
        )
        self.run.log_events()

    def _halt(self, verdict: Verdict, dispatch: Dispatch, loop: bool) -> BudgetExceeded:
        """Halt the run on a detector's verdict: ``RunawayLoop`` for a loop, else a breach.

        The failure's details carry the verdict's evidence and message.
        """
        observed, ceiling = evidence_numbers(verdict.evidence)
        details = self.run.details(
            limit=f"loop_detection.{verdict.detector}" if loop else verdict.detector,
            resource="dispatches" if loop else "spend",
            scope=self.run.scope,
            observed=observed,
            ceiling=ceiling,
            dispatch=dispatch.label,
            evidence={**verdict.evidence, "detector": verdict.detector, "message": verdict.message},
        )
        return self.run.stop(RunawayLoop(details) if loop else BudgetExceeded(details))

    def _predictive_delay(self) -> float:
        predictive = self.anomaly.predictive if self.anomaly else None
        if predictive is None:
            return 0.0
        binding = self.run.ledger.binding_limit("tokens") or self.run.ledger.binding_limit(
            "cost_usd"
        )
        if binding is None:
            return 0.0
        if binding.ceiling <= 0:
            return 0.0  # nothing may be spent at all: the reservation refuses, no pacing
        spent = self.run.ledger.committed.get(binding.resource)
        elapsed = temporalio.workflow.now().timestamp() - self.chain_start
        return predictive_delay(
            spent, binding.ceiling, elapsed, predictive.expected_duration, predictive.max_delay
        )

    # -- what a dispatch carries ---------------------------------------------------------------

    def priority_class(self, dispatch: Dispatch | None) -> PriorityClass | None:
        """The policy's priority class of a dispatch (``None``: the run's own start).

        An activity's tool's ``priority_class``, else the agent's ``default_class``;
        ``None`` when the policy gives neither.
        """
        klass: PriorityClass | None = None
        if dispatch is not None and dispatch.kind == "activity":
            target = dispatch.target
            if target in self._classes:
                klass = self._classes[target]
            else:
                tool = self.run.policy.tool_for(target)
                klass = self._classes[target] = tool[1].priority_class if tool else None
        settings = self.agent.priority if self.agent else None
        if klass is None and settings is not None:
            klass = settings.default_class
        return klass

    def priority(self, dispatch: Dispatch, current: Any) -> Any:
        """The Temporal priority a dispatch gets from the policy (code's own wins)."""
        klass = self.priority_class(dispatch)
        settings = self.agent.priority if self.agent else None
        if klass is None:
            return current
        fairness = None
        if settings is None or settings.fairness_by_tenant:
            fairness = self.run.context.attribution.tenant
        return temporalio.common.Priority(
            priority_key=current.priority_key or PRIORITY_KEYS[klass],
            fairness_key=current.fairness_key or fairness,
            fairness_weight=current.fairness_weight,
        )

    def current_decision(self) -> Degradation | None:
        """The first ``degrade`` rule that applies now, as a decision (logged when it changes)."""
        rules = self.agent.degrade if self.agent else []
        decision: Degradation | None = None
        for index, rule in enumerate(rules):
            reason = ""
            if rule.when_anomalous and self.anomalous is not None:
                reason = f"anomalous spend: {self.anomalous.message}"
            elif rule.when_remaining_below is not None:
                left = self._remaining_fraction()
                if left is not None and left < rule.when_remaining_below:
                    reason = f"{left:.0%} of the run's budget remains"
            if reason:
                decision = Degradation(
                    rule=index,
                    reason=reason,
                    model_map=rule.model_map,
                    max_tokens=rule.max_tokens,
                    disabled_tools=rule.disable_tools,
                    rewrite_arguments=rule.rewrite_arguments,
                )
                break
        if (decision and decision.rule) != (self.decision and self.decision.rule):
            text = decision.reason if decision else "no degrade rule applies any more"
            self.run.ledger.log_detector(
                "degrade", "", f"degrade[{decision.rule}]" if decision else "degrade", text
            )
            self.run.log_events()
        self.decision = decision
        return decision

    def _remaining_fraction(self) -> float | None:
        fractions = []
        for resource in ("tokens", "cost_usd", "tool_calls"):
            binding = self.run.ledger.binding_limit(resource)
            if binding is not None and binding.ceiling > 0:
                # committed spend only: estimates held by in-flight dispatches are worst
                # cases, and a child's carved allowance is not spent yet
                left = binding.ceiling - self.run.ledger.committed.get(resource)
                fractions.append(max(0.0, left) / binding.ceiling)
        return min(fractions) if fractions else None

    # -- after a result --------------------------------------------------------------------------

    def after(self, dispatch: Dispatch, ok: bool, cost_usd: float) -> None:
        """Count a finished dispatch: failures in a row, tier spend, anomalies."""
        tier_name, tier = self._tier(dispatch)
        if tier_name is not None:
            self.tier_cost[tier_name] = self.tier_cost.get(tier_name, 0.0) + cost_usd
            failures = 0 if ok else self.tier_failures.get(tier_name, 0) + 1
            self.tier_failures[tier_name] = failures
            limit = tier.max_consecutive_failures if tier is not None else None
            if limit is not None and failures > limit:
                self._halt_after(
                    Verdict(
                        detector="consecutive_failures",
                        action="terminate",
                        message=f"{failures} failed {tier_name}-tier calls in a row",
                        evidence={"tier": tier_name, "count": failures, "limit": limit},
                    ),
                    dispatch,
                )
        found = self.detector.on_result(dispatch.target, ok) if self.detector is not None else None
        if found is not None:
            if found.action == "terminate":
                self._halt_after(found, dispatch)
            else:
                self._pending_delay += self._act(found, dispatch, loop=True)
        self._check_anomaly(dispatch)

    def _halt_after(self, verdict: Verdict, dispatch: Dispatch) -> None:
        """Halt the run from a result (the failing dispatch already ended)."""
        if self.run.breach is None:
            self._log_verdict("loop", verdict, dispatch.key)
            self._halt(verdict, dispatch, loop=True)

    # -- anomalies against baselines -----------------------------------------------------------

    def baseline_keys(self) -> list[str]:
        """The ledger keys of the baselines this run is judged against."""
        return [f"{scope}:{metric}" for scope in self._baseline_scopes() for metric in _METRICS]

    def _baseline_scopes(self) -> tuple[str, str]:
        """The agent's baseline, and the agent's within its tenant (never mixed agents)."""
        tenant = self.run.context.attribution.tenant
        return f"agent:{self.run.agent}", f"tenant:{tenant}/agent:{self.run.agent}"

    def load_baselines(self, states: dict[str, Any]) -> None:
        """Take the baselines read from the ledger at run start."""
        self.baselines = {key: SpendBaseline.from_state(state) for key, state in states.items()}

    def values(self) -> dict[str, float]:
        """The run's spend so far, per metric, as the baselines measure it."""
        committed = self.run.ledger.committed
        elapsed = temporalio.workflow.now().timestamp() - self.chain_start
        values = {
            "tokens_per_run": committed.tokens,
            "cost_usd_per_run": committed.cost_usd,
        }
        if elapsed >= _MIN_RATE_WINDOW_S:
            values["tokens_per_minute"] = committed.tokens / (elapsed / 60.0)
        return values

    def observations(self) -> dict[str, float]:
        """What a completed run teaches its baselines (keyed for the ledger).

        A run found anomalous is learnt clipped at ``factor`` times the mean, so that a
        lasting change of an agent's spend is learnt in time instead of being flagged for
        ever, while one outlier moves the baseline only so far.
        """
        if self.anomaly is None or self.run.breach is not None:
            return {}
        learnt: dict[str, float] = {}
        for metric, value in self.values().items():
            for scope in self._baseline_scopes():
                key = f"{scope}:{metric}"
                baseline = self.baselines.get(key)
                if self.anomalous is not None and baseline is not None and baseline.count:
                    cap = (self.anomaly.factor or 3.0) * baseline.mean
                    value = min(value, cap) if cap > 0 else value
                learnt[key] = value
        return learnt

    def _check_anomaly(self, dispatch: Dispatch) -> None:
        if self.anomaly is None or self.anomalous is not None or not self.baselines:
            return
        rule = AnomalyRule(
            factor=self.anomaly.factor,
            zscore=self.anomaly.zscore,
            min_samples=self.anomaly.min_samples,
            action=self.anomaly.action,
        )
        for metric, value in self.values().items():
            for scope in self._baseline_scopes():
                baseline = self.baselines.get(f"{scope}:{metric}")
                if baseline is None:
                    continue
                verdict = rule.check(baseline, value, f"{metric} of {scope}")
                if verdict is None:
                    continue
                self.anomalous = verdict
                self._log_verdict("anomaly", verdict, dispatch.key)
                temporalio.workflow.logger.warning("governance anomaly: %s", verdict.message)
                if verdict.action == "terminate" and self.run.breach is None:
                    self._halt(verdict, dispatch, loop=False)
                return


def evidence_numbers(evidence: dict[str, Any]) -> tuple[float, float]:
    """The number a detector judged and its threshold, from a verdict's evidence."""
    return _first_number(evidence, _OBSERVED_KEYS), _first_number(evidence, _CEILING_KEYS)


_OBSERVED_KEYS = ("value", "count", "iterations", "visits")
_CEILING_KEYS = ("limit", "max", "max_repeats", "max_visits", "mean")


def _first_number(evidence: dict[str, Any], keys: tuple[str, ...]) -> float:
    for key in keys:
        value = evidence.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


__all__ = ["PRIORITY_KEYS", "RunGuard", "evidence_numbers"]
