"""Runaway-loop, spend-anomaly and throttling detectors, all in workflow time.

Everything here is pure and deterministic, so the governor can call it inside workflow
code before every dispatch (activity or child workflow) and after every result: no wall
clock (time is passed in as float seconds by the caller, e.g. ``workflow.time()``), no
randomness, no I/O, no threads, and no Python ``hash()`` (its value changes between
processes). Each call costs at most O(window) and allocates nothing large.

A detector that fires returns a :class:`Verdict` saying what it saw, what should be done
(``alert``, ``throttle`` or ``terminate``) and the evidence; acting on it is the caller's
business. The pieces:

* :func:`call_signature`: a stable short hash of a dispatch's target and arguments.
* :class:`LoopDetector` (configured by :class:`LoopRules`): the same call repeated inside a
  window, a cycle of tool names repeated back to back, consecutive failures, and a cap
  on dispatches per run.
* :func:`agent_cycle`: an agent (workflow type) about to be revisited in its own chain.
* :class:`TokenBucket`: a rate limit that makes a dispatch wait rather than dropping it.
* :class:`SpendBaseline` and :class:`AnomalyRule`: exponentially weighted spend baseline
  and the rule that flags a spend far above it.
* :func:`projected_exhaustion`, :func:`exhaustion_verdict` and :func:`predictive_delay`:
  burn-rate projection of a budget and the pacing delay that keeps it on schedule.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .problems import PolicyError, PolicyIssue

Action = Literal["alert", "throttle", "terminate"]
"""What a fired detector asks for: report it, slow the run down, or halt the run."""

SIGNATURE_LENGTH = 16
"""Hex characters kept from the SHA-256 digest by :func:`call_signature` (64 bits)."""

_SIGNIFICANT_DIGITS = 12
_MAX_EXACT_INT = 2**53
_RECENT_FAILURES = 16


def _invalid(where: str, field: str, value: Any, expected: str) -> PolicyError:
    return PolicyError([PolicyIssue(source=where, path=field, value=value, expected=expected)])


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- call signatures ----------------------------------------------------------------------


def call_signature(target: str, args: Sequence[Any]) -> str:
    """A stable short hash of a dispatch: its target name plus its normalised arguments.

    The arguments are normalised, then serialised as JSON with sorted keys and compact
    separators, and hashed with SHA-256 together with the target. Normalisation:

    * pydantic models become ``model_dump(mode="python")``, dataclass instances
      ``dataclasses.asdict``, enums their value, mappings dicts with string keys, tuples
      and lists lists, sets and frozensets sorted lists;
    * floats are rounded to 12 significant digits, and a float that is then integral
      equals the same int (``1.0`` and ``1`` hash alike); NaN and infinities become
      strings;
    * runs of whitespace in strings collapse to one space, and ends are stripped;
    * anything else becomes ``str(value)``, or only its type name when it has neither a
      ``__str__`` nor a ``__repr__`` of its own (the default ones hold a memory address).

    The result is the same for the same inputs in any process (no Python ``hash()``).

    Args:
        target: The activity or workflow type name.
        args: The positional arguments of the dispatch.

    Returns:
        The first :data:`SIGNATURE_LENGTH` hex digits of the SHA-256 digest.

    """
    payload = json.dumps(
        _normalise(list(args)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    digest = hashlib.sha256()
    digest.update(target.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(payload.encode("utf-8"))
    return digest.hexdigest()[:SIGNATURE_LENGTH]


def _normalise(value: Any) -> Any:
    """Turn a value into plain JSON data with stable floats and whitespace."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _normalise_float(value)
    if isinstance(value, BaseModel):
        # python mode keeps sets as sets, which are sorted below: a JSON dump would list
        # them in hash order, which differs between processes
        return _normalise(value.model_dump(mode="python"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _normalise(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return _normalise(value.value)
    if isinstance(value, Mapping):
        return {str(key): _normalise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [_normalise(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    kind = type(value)
    as_str: object = kind.__str__
    as_repr: object = kind.__repr__
    if as_str is object.__str__ and as_repr is object.__repr__:
        return f"<{kind.__qualname__}>"  # the default repr holds a memory address
    return " ".join(str(value).split())


def _normalise_float(value: float) -> float | int | str:
    if not math.isfinite(value):
        return str(value)
    # 12 significant digits absorb float arithmetic noise (0.1 + 0.2 is 0.3) and keep
    # distinct amounts, ids and epoch timestamps apart
    rounded = float(f"{value:.{_SIGNIFICANT_DIGITS}g}")
    if rounded.is_integer() and abs(rounded) < _MAX_EXACT_INT:
        return int(rounded)  # 1.0 hashes as 1; also folds -0.0 into 0
    return rounded


# -- verdicts -----------------------------------------------------------------------------


class Verdict(BaseModel):
    """What a fired detector saw and what it asks the governor to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str
    """Which detector fired: ``repeated_signature``, ``tool_cycle``, ``agent_cycle``,
    ``consecutive_failures``, ``iterations``, ``anomaly`` or ``projected_exhaustion``."""
    action: Action
    """``alert`` reports, ``throttle`` slows the run down, ``terminate`` halts it."""
    message: str
    """One human-readable line, e.g. ``call_llm with the same arguments 4 times in the
    last 32 dispatches``."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """What was seen: the repeated signature and target, the cycle as a list of names,
    counts and numbers. JSON-serialisable."""


# -- runaway loops in one run -------------------------------------------------------------


class LoopRules(BaseModel):
    """Configuration of a :class:`LoopDetector`; each check is off when its knob is ``None``.

    Three views of the run's dispatches, each with its own knob:

    * **Repeated signature** (``signature_window``): the same target with the same
      normalised arguments (:func:`call_signature`) more than ``max_repeats`` times within
      the last ``signature_window`` dispatches. An agent calling one tool with different
      arguments (a map over 30 documents) never fires it.
    * **Tool cycle** (``max_cycle_repeats``): looks at *targets* (tool and agent names)
      only, not arguments. A sequence of 2 to ``max_cycle_length`` targets, not all the
      same, repeated back to back more than ``max_cycle_repeats`` times at the tail of the
      run's dispatches fires, e.g. ``search, read`` five times over. Because arguments
      are ignored, an agent that legitimately alternates tools per item (``fetch,
      summarise`` for each of 20 documents, or ``plan, act`` with fresh arguments) looks
      like a cycle too: raise ``max_cycle_repeats`` above the expected item count for such
      agents, or set it to ``None``. The same target over and over is not a cycle; that
      is the repeated-signature check's business.
    * **Consecutive failures** (``max_consecutive_failures``) and **iterations**
      (``max_iterations``, dispatches per run).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    signature_window: int | None = Field(default=None, ge=1)
    """How many of the latest dispatch signatures the repeat check looks at."""
    max_repeats: int = Field(default=3, ge=1)
    """A signature seen more than this many times inside the window fires."""
    max_cycle_length: int = Field(default=4, ge=2)
    """Longest cycle of targets looked for (the shortest is 2)."""
    max_cycle_repeats: int | None = Field(default=3, ge=1)
    """A target cycle repeated back to back more than this many times fires."""
    max_consecutive_failures: int | None = Field(default=None, ge=1)
    """More than this many failed results in a row, with no success between, fires."""
    max_iterations: int | None = Field(default=None, ge=1)
    """More than this many dispatches in the run fires."""
    action: Action = "terminate"
    """What every verdict of this detector asks for."""


class LoopState(BaseModel):
    """A :class:`LoopDetector`'s memory, to carry across continue-as-new."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signatures: list[str] = Field(default_factory=list)
    """The latest dispatch signatures, oldest first (at most ``signature_window``)."""
    targets: list[str] = Field(default_factory=list)
    """The latest dispatch targets, oldest first (as many as the cycle check needs)."""
    iterations: int = Field(default=0, ge=0)
    """Dispatches recorded so far."""
    consecutive_failures: int = Field(default=0, ge=0)
    """Failed results since the last success."""
    failed_targets: list[str] = Field(default_factory=list)
    """Targets of the latest consecutive failures, oldest first."""


class LoopDetector:
    """Watches one run's dispatches and results for runaway loops.

    Call :meth:`on_dispatch` before every dispatch and :meth:`on_result` after every
    result. A verdict is returned every time the condition holds (not only when it first
    becomes true), so a caller that only alerts should report each detector once.

    Args:
        rules: What to look for; see :class:`LoopRules`.
        state: Memory from a previous run's :meth:`state`, e.g. across continue-as-new.

    """

    def __init__(self, rules: LoopRules, state: LoopState | None = None) -> None:
        self.rules = rules
        state = state or LoopState()
        cycle_memory = (
            rules.max_cycle_length * (rules.max_cycle_repeats + 1)
            if rules.max_cycle_repeats is not None
            else 0
        )
        self._signatures: deque[str] = deque(
            state.signatures[-rules.signature_window :] if rules.signature_window else (),
            maxlen=rules.signature_window or 0,
        )
        self._counts: Counter[str] = Counter(self._signatures)
        self._targets: deque[str] = deque(
            state.targets[-cycle_memory:] if cycle_memory else (), maxlen=cycle_memory
        )
        self._iterations = state.iterations
        self._failures = state.consecutive_failures
        self._failed_targets: deque[str] = deque(state.failed_targets, maxlen=_RECENT_FAILURES)

    @property
    def iterations(self) -> int:
        """Dispatches recorded so far."""
        return self._iterations

    @property
    def consecutive_failures(self) -> int:
        """Failed results since the last success."""
        return self._failures

    def state(self) -> LoopState:
        """The detector's memory, to hand to a new detector (e.g. after continue-as-new).

        Returns:
            A serialisable snapshot.

        """
        return LoopState(
            signatures=list(self._signatures),
            targets=list(self._targets),
            iterations=self._iterations,
            consecutive_failures=self._failures,
            failed_targets=list(self._failed_targets),
        )

    def on_dispatch(self, target: str, signature: str) -> Verdict | None:
        """Record a dispatch and check for a repeated signature, a tool cycle or too many.

        Args:
            target: The activity or child workflow type name.
            signature: Its :func:`call_signature`.

        Returns:
            The first verdict that fires (repeated signature, then tool cycle, then
            iterations), or ``None``.

        """
        self._iterations += 1
        verdict = self._record_signature(target, signature)
        if self._targets.maxlen:
            self._targets.append(target)
            verdict = verdict or self._check_cycle()
        limit = self.rules.max_iterations
        if verdict is None and limit is not None and self._iterations > limit:
            verdict = Verdict(
                detector="iterations",
                action=self.rules.action,
                message=f"{self._iterations} dispatches in one run (max {limit}); "
                f"this one is {target}",
                evidence={"target": target, "iterations": self._iterations, "max": limit},
            )
        return verdict

    def on_result(self, target: str, ok: bool) -> Verdict | None:
        """Record a dispatch's outcome and check for too many failures in a row.

        Args:
            target: The activity or child workflow type name.
            ok: Whether it succeeded. A success resets the count.

        Returns:
            A ``consecutive_failures`` verdict, or ``None``.

        """
        if ok:
            self._failures = 0
            self._failed_targets.clear()
            return None
        self._failures += 1
        self._failed_targets.append(target)
        limit = self.rules.max_consecutive_failures
        if limit is None or self._failures <= limit:
            return None
        return Verdict(
            detector="consecutive_failures",
            action=self.rules.action,
            message=f"{self._failures} failed results in a row with no success in between "
            f"(max {limit}); the last from {target}",
            evidence={
                "target": target,
                "count": self._failures,
                "max": limit,
                "targets": list(self._failed_targets),
            },
        )

    def _record_signature(self, target: str, signature: str) -> Verdict | None:
        window = self._signatures
        if not window.maxlen:
            return None
        if len(window) == window.maxlen:
            evicted = window[0]
            self._counts[evicted] -= 1
            if not self._counts[evicted]:
                del self._counts[evicted]
        window.append(signature)
        self._counts[signature] += 1
        count = self._counts[signature]
        if count <= self.rules.max_repeats:
            return None
        return Verdict(
            detector="repeated_signature",
            action=self.rules.action,
            message=f"{target} with the same arguments {count} times "
            f"in the last {len(window)} dispatches",
            evidence={
                "target": target,
                "signature": signature,
                "count": count,
                "window": len(window),
                "max_repeats": self.rules.max_repeats,
            },
        )

    def _check_cycle(self) -> Verdict | None:
        """Find the shortest target cycle repeated too often at the tail of the run."""
        targets = self._targets
        repeats = self.rules.max_cycle_repeats
        if repeats is None:
            return None
        size = len(targets)
        last = targets[-1]
        for length in range(2, self.rules.max_cycle_length + 1):
            if size < length * (repeats + 1):
                break
            if all(targets[-1 - j] == last for j in range(1, length)):
                continue  # one target over and over: not a cycle
            matched = length
            while matched < size and targets[-1 - matched] == targets[-1 - matched % length]:
                matched += 1
            count = matched // length
            if count <= repeats:
                continue
            cycle = [targets[j - length] for j in range(length)]
            return Verdict(
                detector="tool_cycle",
                action=self.rules.action,
                message=f"the tool cycle {' -> '.join(cycle)} repeated {count} times "
                f"back to back (max {repeats})",
                evidence={"cycle": cycle, "count": count, "max_repeats": repeats},
            )
        return None


# -- agent cycles across a workflow tree --------------------------------------------------


def agent_cycle(
    chain: Sequence[str],
    next_agent: str,
    max_visits: int = 2,
    *,
    action: Action = "terminate",
) -> Verdict | None:
    """Check whether starting a child agent would revisit an agent too often in its chain.

    ``planner -> executor -> planner -> executor -> planner`` visits ``planner`` three
    times. An agent that legitimately recurses into itself (divide and conquer) needs a
    higher ``max_visits``; depth as such is ``max_depth``'s business.

    Args:
        chain: Workflow type names from the root run to the current run, root first.
        next_agent: The workflow type of the child about to start.
        max_visits: How many times one agent may appear in the chain, the child included.
        action: What the verdict asks for.

    Returns:
        An ``agent_cycle`` verdict when ``next_agent`` would appear more than
        ``max_visits`` times, else ``None``. Its evidence has ``cycle`` (the path from the
        agent's first visit to the child), ``repeated_subsequence`` (the path between the
        agent's last two visits), ``repetitions`` (how often that subsequence repeats back
        to back at the tail), ``visits`` and ``chain``.

    """
    visits = 1 + sum(1 for agent in chain if agent == next_agent)
    if visits <= max_visits:
        return None
    path = [*chain, next_agent]
    first = path.index(next_agent)
    previous = len(chain) - 1 - list(reversed(chain)).index(next_agent)
    unit = path[previous:-1]
    repetitions = 1
    end = previous
    while end - len(unit) >= 0 and path[end - len(unit) : end] == unit:
        repetitions += 1
        end -= len(unit)
    cycle = path[first:]
    return Verdict(
        detector="agent_cycle",
        action=action,
        message=f"{next_agent} would be visited {visits} times in one chain "
        f"(max {max_visits}): {' -> '.join(cycle)}",
        evidence={
            "agent": next_agent,
            "visits": visits,
            "max_visits": max_visits,
            "cycle": cycle,
            "repeated_subsequence": unit,
            "repetitions": repetitions,
            "chain": path,
        },
    )


# -- throttling ---------------------------------------------------------------------------


class BucketState(BaseModel):
    """A :class:`TokenBucket` as plain data, to carry across continue-as-new."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_sec: float = Field(gt=0, allow_inf_nan=False)
    """Tokens added per second."""
    burst: float = Field(ge=1, allow_inf_nan=False)
    """Most tokens the bucket holds."""
    tokens: float = Field(allow_inf_nan=False)
    """Tokens held at ``updated_at``; negative when dispatches are booked ahead."""
    updated_at: float | None = Field(default=None, allow_inf_nan=False)
    """Workflow time of the last :meth:`TokenBucket.take`, ``None`` before the first."""


class TokenBucket:
    """A token bucket whose overdrawn takes wait instead of being dropped.

    The bucket starts full (``burst`` tokens) and refills at ``rate_per_sec`` up to
    ``burst``. :meth:`take` always books its tokens, letting the balance go negative:
    a negative balance is a queue of dispatches booked ahead, and the wait returned is
    the time the refill needs to pay it back. With rate 10 and burst 5, twenty takes at
    ``now=0`` wait 0 (five times), then 0.1, 0.2, ... 1.5 seconds.

    Time is the caller's (workflow) time in seconds and must not go backwards; a ``now``
    earlier than the last one is treated as the last one.

    Args:
        rate_per_sec: Tokens added per second, > 0.
        burst: Most tokens held, >= 1; also how many takes pass at once from full.

    """

    def __init__(self, rate_per_sec: float, burst: float) -> None:
        if not (math.isfinite(rate_per_sec) and rate_per_sec > 0):
            raise _invalid("<TokenBucket>", "rate_per_sec", rate_per_sec, "a number > 0")
        if not (math.isfinite(burst) and burst >= 1):
            raise _invalid("<TokenBucket>", "burst", burst, "a number >= 1")
        self.rate_per_sec = float(rate_per_sec)
        self.burst = float(burst)
        self._tokens = self.burst
        self._updated_at: float | None = None

    def take(self, now: float, tokens: float = 1.0) -> float:
        """Book tokens for a dispatch and say how long it must wait for them.

        Args:
            now: The caller's current time in seconds (e.g. ``workflow.time()``).
            tokens: How many tokens the dispatch needs, >= 0.

        Returns:
            Seconds to wait before dispatching; ``0.0`` when the tokens are there now.

        """
        if not (math.isfinite(tokens) and tokens >= 0):
            raise _invalid("<TokenBucket.take>", "tokens", tokens, "a number >= 0")
        self._refill(now)
        self._tokens -= tokens
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_sec

    def available(self, now: float) -> float:
        """Tokens available at ``now`` without booking any (negative when overdrawn).

        Args:
            now: The caller's current time in seconds.

        Returns:
            The balance after refilling up to ``now``.

        """
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if self._updated_at is None:
            self._updated_at = now
        elif now > self._updated_at:
            elapsed = now - self._updated_at
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_sec)
            self._updated_at = now

    def state(self) -> dict[str, Any]:
        """The bucket as plain JSON data (see :class:`BucketState`).

        Returns:
            A dict for :meth:`from_state`.

        """
        return BucketState(
            rate_per_sec=self.rate_per_sec,
            burst=self.burst,
            tokens=self._tokens,
            updated_at=self._updated_at,
        ).model_dump()

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | BucketState) -> TokenBucket:
        """Rebuild a bucket from :meth:`state`.

        Args:
            state: What :meth:`state` returned (or the same as a :class:`BucketState`).

        Returns:
            A bucket that behaves exactly as the saved one would have.

        """
        data = state if isinstance(state, BucketState) else BucketState.model_validate(state)
        bucket = cls(data.rate_per_sec, data.burst)
        bucket._tokens = min(data.tokens, bucket.burst)
        bucket._updated_at = data.updated_at
        return bucket


# -- spend anomalies ----------------------------------------------------------------------


class BaselineState(BaseModel):
    """A :class:`SpendBaseline` as plain data, to carry across continue-as-new."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.2, gt=0, le=1)
    """Weight of the newest sample."""
    min_samples: int = Field(default=5, ge=1)
    """Samples needed before :meth:`SpendBaseline.zscore` and ``ratio`` answer."""
    mean: float = Field(default=0.0, allow_inf_nan=False)
    """Exponentially weighted mean."""
    variance: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Exponentially weighted variance."""
    count: int = Field(default=0, ge=0)
    """Samples seen."""


class SpendBaseline:
    """Exponentially weighted mean and variance of a spend (West's incremental update).

    The first sample sets ``mean = x`` and ``variance = 0``. Each later sample ``x``::

        diff     = x - mean
        incr     = alpha * diff
        mean     = mean + incr
        variance = (1 - alpha) * (variance + diff * incr)

    (D. H. D. West, 1979; T. Finch, "Incremental calculation of weighted mean and
    variance", 2009.) A larger ``alpha`` forgets faster.

    Args:
        alpha: Weight of the newest sample, in (0, 1].
        min_samples: Samples needed before :meth:`zscore` and :meth:`ratio` answer.

    """

    def __init__(self, alpha: float = 0.2, min_samples: int = 5) -> None:
        if not (math.isfinite(alpha) and 0 < alpha <= 1):
            raise _invalid("<SpendBaseline>", "alpha", alpha, "a number in (0, 1]")
        if min_samples < 1:
            raise _invalid("<SpendBaseline>", "min_samples", min_samples, "an integer >= 1")
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self._mean = 0.0
        self._variance = 0.0
        self._count = 0

    @property
    def mean(self) -> float:
        """Exponentially weighted mean (0 before the first sample)."""
        return self._mean

    @property
    def variance(self) -> float:
        """Exponentially weighted variance (0 before the second sample)."""
        return self._variance

    @property
    def std(self) -> float:
        """Square root of :attr:`variance`."""
        return math.sqrt(self._variance)

    @property
    def count(self) -> int:
        """Samples seen."""
        return self._count

    def update(self, value: float) -> None:
        """Fold one sample into the baseline.

        Args:
            value: The spend observed, e.g. the tokens of one LLM call.

        """
        if not math.isfinite(value):
            raise _invalid("<SpendBaseline.update>", "value", value, "a finite number")
        if self._count == 0:
            self._mean = float(value)
            self._variance = 0.0
        else:
            diff = value - self._mean
            incr = self.alpha * diff
            self._mean += incr
            self._variance = (1 - self.alpha) * (self._variance + diff * incr)
        self._count += 1

    def zscore(self, value: float) -> float | None:
        """How many standard deviations ``value`` lies above the mean.

        Args:
            value: The spend to judge.

        Returns:
            ``(value - mean) / std``; ``None`` before ``min_samples`` samples. With zero
            variance it is ``0.0`` at the mean and an infinity elsewhere.

        """
        if self._count < self.min_samples:
            return None
        return _zscore(value, self._mean, self.std)

    def ratio(self, value: float) -> float | None:
        """``value`` as a multiple of the mean.

        Args:
            value: The spend to judge.

        Returns:
            ``value / mean``; ``None`` before ``min_samples`` samples or while the mean is
            not positive.

        """
        if self._count < self.min_samples or self._mean <= 0:
            return None
        return value / self._mean

    def state(self) -> BaselineState:
        """The baseline as a serialisable model.

        Returns:
            A snapshot for :meth:`from_state`.

        """
        return BaselineState(
            alpha=self.alpha,
            min_samples=self.min_samples,
            mean=self._mean,
            variance=self._variance,
            count=self._count,
        )

    @classmethod
    def from_state(cls, state: BaselineState | Mapping[str, Any]) -> SpendBaseline:
        """Rebuild a baseline from :meth:`state`.

        Args:
            state: A :class:`BaselineState` or its ``model_dump()``.

        Returns:
            The baseline.

        """
        data = state if isinstance(state, BaselineState) else BaselineState.model_validate(state)
        baseline = cls(data.alpha, data.min_samples)
        baseline._mean = data.mean
        baseline._variance = data.variance
        baseline._count = data.count
        return baseline


def _zscore(value: float, mean: float, std: float) -> float:
    if std > 0:
        return (value - mean) / std
    if value == mean:
        return 0.0
    return math.inf if value > mean else -math.inf


class AnomalyRule(BaseModel):
    """When a spend is anomalously high against its :class:`SpendBaseline`.

    It fires when ``value > factor * mean`` or when ``z > zscore``, where
    ``z = (value - mean) / max(std, min_std_ratio * |mean|)``. The floor on the standard
    deviation keeps a baseline of nearly identical samples from making every small rise
    infinitely anomalous. Only spends above the mean count. Check a value *before*
    folding it into the baseline.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Fire when the value exceeds this multiple of the mean; ``None`` = off."""
    zscore: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Fire when the value is more than this many standard deviations above the mean."""
    min_samples: int = Field(default=5, ge=1)
    """Samples the baseline needs before the rule judges at all."""
    min_std_ratio: float = Field(default=0.05, ge=0, allow_inf_nan=False)
    """Floor on the standard deviation, as a fraction of the mean's magnitude."""
    action: Action = "alert"
    """What the verdict asks for."""

    def check(self, baseline: SpendBaseline, value: float, what: str) -> Verdict | None:
        """Judge one spend against a baseline.

        Args:
            baseline: The baseline of earlier spends (not yet updated with ``value``).
            value: The spend to judge.
            what: What was spent, for the message, e.g. ``tokens of call_llm``.

        Returns:
            An ``anomaly`` verdict, or ``None`` (also before ``min_samples`` samples).
            Its evidence has ``what``, ``value``, ``mean``, ``std``, ``z`` (``None`` when
            infinite), ``ratio``, ``factor`` and ``zscore``.

        """
        if baseline.count < self.min_samples:
            return None
        mean, std = baseline.mean, baseline.std
        z = _zscore(value, mean, max(std, self.min_std_ratio * abs(mean)))
        ratio = value / mean if mean > 0 else None
        by_factor = self.factor is not None and mean > 0 and value > self.factor * mean
        by_z = self.zscore is not None and z > self.zscore
        if not (by_factor or by_z):
            return None
        reasons = []
        if by_factor and ratio is not None:
            reasons.append(f"{ratio:.1f}x the baseline mean {mean:.4g} (max {self.factor:g}x)")
        if by_z:
            reasons.append(f"z={z:.1f} (max {self.zscore:g})")
        return Verdict(
            detector="anomaly",
            action=self.action,
            message=f"{what} of {value:.4g} is anomalous: {'; '.join(reasons)}",
            evidence={
                "what": what,
                "value": value,
                "mean": mean,
                "std": std,
                "z": _finite(z),
                "ratio": ratio,
                "factor": self.factor,
                "zscore": self.zscore,
                "samples": baseline.count,
            },
        )


# -- burn-rate projection -----------------------------------------------------------------


def projected_exhaustion(
    spent: float, ceiling: float, elapsed_s: float, expected_duration_s: float
) -> float | None:
    """Project a budget's total spend at the run's expected end from its burn rate so far.

    With spend ``s`` after ``t`` seconds of a run expected to last ``T`` seconds, the
    average burn rate is ``r = s / t`` and the projected total is ``P = r * T = s * T /
    t``. The budget is on course to be exhausted before the end when ``P > ceiling``
    (see :func:`exhaustion_verdict`).

    Args:
        spent: Spend so far, ``s``.
        ceiling: The budget's ceiling (not used by the projection itself; kept so that
            the signature matches :func:`predictive_delay`).
        elapsed_s: Seconds since the run started, ``t``.
        expected_duration_s: Seconds the run is expected to last, ``T``.

    Returns:
        The projected total ``P``, or ``None`` while ``t <= 0`` (no rate yet).

    """
    del ceiling
    if elapsed_s <= 0:
        return None
    return spent / elapsed_s * expected_duration_s


def exhaustion_verdict(
    spent: float,
    ceiling: float,
    elapsed_s: float,
    expected_duration_s: float,
    what: str,
    *,
    min_elapsed_s: float = 0.0,
    action: Action = "alert",
) -> Verdict | None:
    """A ``projected_exhaustion`` verdict when the burn rate overruns the budget.

    Early in a run one expensive call projects a huge total; ``min_elapsed_s`` keeps
    the projection quiet until the rate means something.

    Args:
        spent: Spend so far.
        ceiling: The budget's ceiling.
        elapsed_s: Seconds since the run started.
        expected_duration_s: Seconds the run is expected to last.
        what: The budget, for the message, e.g. ``cost_usd of run planner/run-1``.
        min_elapsed_s: Stay silent before this many seconds have elapsed.
        action: What the verdict asks for.

    Returns:
        The verdict when the projected total exceeds the ceiling, else ``None``. Its
        evidence has ``spent``, ``ceiling``, ``projected``, ``elapsed_s``,
        ``expected_duration_s``, ``burn_rate`` (per second) and ``exhausted_at_s`` (when
        the ceiling would be reached at that rate, from the run's start).

    """
    if elapsed_s < min_elapsed_s:
        return None
    projected = projected_exhaustion(spent, ceiling, elapsed_s, expected_duration_s)
    if projected is None or projected <= ceiling:
        return None
    rate = spent / elapsed_s
    exhausted_at = ceiling / rate if rate > 0 else None
    return Verdict(
        detector="projected_exhaustion",
        action=action,
        message=f"{what} is projected to reach {projected:.4g} by the expected end "
        f"({expected_duration_s:g}s), over its ceiling {ceiling:.4g}",
        evidence={
            "what": what,
            "spent": spent,
            "ceiling": ceiling,
            "projected": projected,
            "elapsed_s": elapsed_s,
            "expected_duration_s": expected_duration_s,
            "burn_rate": rate,
            "exhausted_at_s": exhausted_at,
        },
    )


def predictive_delay(
    spent: float,
    ceiling: float,
    elapsed_s: float,
    expected_duration_s: float,
    max_delay_s: float,
) -> float:
    """Seconds to hold the next dispatch so the budget lasts until the expected end.

    With spend ``s`` after ``t`` seconds, ceiling ``C`` and expected duration ``T``: at
    the average rate ``s / t`` the ceiling is reached ``C * t / s`` seconds after the
    start. Holding the next dispatch for ``d`` seconds lowers the rate to
    ``s / (t + d)``, so the ceiling is reached at ``C * (t + d) / s``. Requiring that to
    be no sooner than ``T`` gives::

        d = s * T / C - t

    i.e. wait until the time at which a linear schedule would have allowed spending
    ``s``: the fraction of the budget spent may not run ahead of the fraction of the
    expected duration elapsed. The result is clamped to ``[0, max_delay_s]``; it is 0
    when on track (``s / C <= t / T``), and ``max_delay_s`` once the budget is spent.

    Args:
        spent: Spend so far, ``s`` >= 0.
        ceiling: The budget's ceiling, ``C`` > 0.
        elapsed_s: Seconds since the run started, ``t``.
        expected_duration_s: Seconds the run is expected to last, ``T`` > 0.
        max_delay_s: Longest delay to return, >= 0.

    Returns:
        The delay in seconds.

    """
    if not (math.isfinite(ceiling) and ceiling > 0):
        raise _invalid("<predictive_delay>", "ceiling", ceiling, "a number > 0")
    if not (math.isfinite(expected_duration_s) and expected_duration_s > 0):
        raise _invalid(
            "<predictive_delay>", "expected_duration_s", expected_duration_s, "a number > 0"
        )
    if not max_delay_s >= 0:
        raise _invalid("<predictive_delay>", "max_delay_s", max_delay_s, "a number >= 0")
    if spent <= 0:
        return 0.0
    if spent >= ceiling:
        return float(max_delay_s)
    delay = spent * expected_duration_s / ceiling - elapsed_s
    return min(max(delay, 0.0), float(max_delay_s))


__all__ = [
    "SIGNATURE_LENGTH",
    "Action",
    "AnomalyRule",
    "BaselineState",
    "BucketState",
    "LoopDetector",
    "LoopRules",
    "LoopState",
    "SpendBaseline",
    "TokenBucket",
    "Verdict",
    "agent_cycle",
    "call_signature",
    "exhaustion_verdict",
    "predictive_delay",
    "projected_exhaustion",
]
