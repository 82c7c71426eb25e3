"""Bounded proofs of the accounting rules with the Z3 solver.

Every property is checked over **every interleaving of k dispatches**: each dispatch is
started (reserved, carved or leased) at most once and finished (committed or settled) at
most once after its start, in any order, with any amounts. The steps call the very rule
functions the runtime calls (:func:`~temporal_governor.core.accounting.refuses`,
:func:`~temporal_governor.core.accounting.headroom`, the carve's ``starved`` and ``share``,
:func:`~temporal_governor.core.book.lease_grant`,
:func:`~temporal_governor.core.book.shared_refuses`, the book's ``_clean``) with solver
terms in place of floats, so a change of a rule changes what is proved. Amounts are real
numbers here (see ``docs/verification.md``).

z3 is imported only when a proof runs (the optional ``verify`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..core import accounting, book, carving
from ..core.accounting import Ops
from ._solver import load_z3

EPSILON = accounting._EPSILON
"""The runtime's tolerance for float residue (the shared book's is the same, tested)."""

_PENDING, _OPEN, _DONE = 0, 1, 2
_ROBUST_TIMEOUT_MS = 5_000
PROOF_TIMEOUT_S = 600.0
"""The longest one property's solver run may take; then its outcome is ``unknown``
(k = 5, the largest the CLI allows, took at most 199 s a property when measured)."""
MAX_PROOF_K = 5
"""The most dispatches ``temporal-governor prove --k`` interleaves (the time grows about
tenfold per dispatch: k = 6 would take hours)."""

Outcome = Literal["proved", "counterexample", "unknown"]
State = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One step of a counterexample."""

    action: str
    """``reserve``, ``carve``, ``lease`` (starts) or ``commit``, ``settle`` (finishes)."""
    dispatch: int
    """Which dispatch, from 1."""
    amount: float
    """What the start asked for (estimate, carve or grant), or what the finish used."""
    admitted: bool | None
    """For a start: whether the ledger took it."""
    committed: float
    """The ledger's committed spend after the step."""
    reserved: float
    """What the ledger counts as reserved after the step."""


@dataclass(frozen=True)
class Counterexample:
    """A concrete interleaving, with numbers, that breaks a property."""

    inputs: dict[str, float]
    """Ceilings, estimates, actuals and settings (``1``/``0`` for yes/no)."""
    steps: list[Step]
    """The steps, in order; the property breaks at the last one."""

    def describe(self) -> str:
        """The counterexample as readable lines."""
        lines = ["  " + ", ".join(f"{name}={value:g}" for name, value in self.inputs.items())]
        for number, step in enumerate(self.steps, 1):
            verdict = "" if step.admitted is None else (" ok" if step.admitted else " refused")
            lines.append(
                f"  {number}. {step.action} #{step.dispatch} {step.amount:g}{verdict}"
                f" -> committed {step.committed:g}, reserved {step.reserved:g}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class ProofResult:
    """The outcome of one bounded proof."""

    name: str
    """The property's short name."""
    statement: str
    """What is claimed."""
    k: int
    """The number of dispatches interleaved."""
    outcome: Outcome
    """``proved`` (no interleaving breaks it), ``counterexample`` or ``unknown``."""
    counterexample: Counterexample | None
    """The breaking interleaving, for ``counterexample``."""
    seconds: float
    """Solver time."""
    reason: str = ""
    """Why the solver gave up, for ``unknown`` (e.g. ``timeout``)."""

    @property
    def proved(self) -> bool:
        """Whether the property holds for every interleaving of ``k`` dispatches."""
        return self.outcome == "proved"

    def describe(self) -> str:
        """One line (and a counterexample's steps)."""
        why = f", {self.reason}" if self.reason else ""
        head = f"{self.name}: {self.outcome} for k = {self.k} ({self.seconds:.2f} s{why}): "
        text = head + self.statement
        if self.counterexample is not None:
            text += "\n" + self.counterexample.describe()
        return text


@dataclass(frozen=True)
class _Start:
    admitted: Any
    """Whether the ledger takes the start (a refused dispatch is done)."""
    after: State
    """The state changes when admitted."""
    amount: Any
    breaks: Any = False
    """An obligation of the start itself that fails (a carve or grant that does not fit)."""


@dataclass(frozen=True)
class _Finish:
    after: State
    allowed: Any = True
    """Extra condition on the finish (an actual within what was held)."""


class _Model:
    """What one ledger does on a start and a finish, over solver terms."""

    name = ""
    statement = ""
    start_action = "reserve"
    """What a start is called (a dispatch of :attr:`special`; the others ``reserve``)."""
    finish_action = "commit"

    def __init__(self, z3: Any, ops: Ops, k: int) -> None:
        self.z3, self.ops, self.k = z3, ops, k
        self.inputs: dict[str, Any] = {}
        self.assumptions: list[Any] = []
        self.actuals: list[Any] = []
        """What each dispatch really used, as its finish reports it."""
        self.special: list[Any] = []
        """Per dispatch, whether its start is ``start_action`` rather than a plain reserve."""

    def real(self, name: str, low: float | None = 0.0) -> Any:
        """A real input, at least ``low``."""
        value = self.z3.Real(name)
        self.inputs[name] = value
        if low is not None:
            self.assumptions.append(value >= low)
        return value

    def flag(self, name: str) -> Any:
        """A yes/no input."""
        value = self.z3.Bool(name)
        self.inputs[name] = value
        return value

    def initial(self) -> State:
        """The state before the first step (besides dispatch statuses)."""
        raise NotImplementedError

    def start(self, i: int, state: State) -> _Start:
        """Dispatch ``i`` starts."""
        raise NotImplementedError

    def finish(self, i: int, state: State) -> _Finish:
        """Dispatch ``i`` finishes."""
        raise NotImplementedError

    def broken(self, state: State) -> Any:
        """Whether the property fails in ``state``."""
        raise NotImplementedError

    def open_count(self, state: State, which: Callable[[int], Any]) -> Any:
        """How many open dispatches ``which`` selects."""
        z3 = self.z3
        return z3.Sum(
            [z3.If(z3.And(state[f"status{j}"] == _OPEN, which(j)), 1, 0) for j in range(self.k)]
        )

    def by_count(self, count: Any, top: int, value: Callable[[int], Any]) -> Any:
        """``value(count)`` for a solver count from 0 to ``top``, one concrete call each."""
        chosen = value(top)
        for n in range(top - 1, -1, -1):
            chosen = self.z3.If(count == n, value(n), chosen)
        return chosen


class _RunLedgerModel(_Model):
    """:class:`~temporal_governor.core.accounting.RunLedger`: two terminate limits on a resource."""

    limits = 2
    within = True
    """Whether every actual stays within its estimate."""

    def __init__(self, z3: Any, ops: Ops, k: int) -> None:
        super().__init__(z3, ops, k)
        self.ceilings = [self.real(f"ceiling_{n + 1}") for n in range(self.limits)]
        self.estimates = [self.real(f"estimate_{i + 1}") for i in range(k)]
        self.actuals = [self.real(f"actual_{i + 1}") for i in range(k)]
        start = self.real("committed_at_start")
        self.assumptions += [start <= ceiling + EPSILON for ceiling in self.ceilings]

    def initial(self) -> State:
        held = {f"held{i}": self.z3.RealVal(0) for i in range(self.k)}
        zero = self.z3.RealVal(0)
        return {
            "committed": self.inputs["committed_at_start"],
            "reserved": zero,
            "excess": zero,
            **held,
        }

    def start(self, i: int, state: State) -> _Start:
        committed, reserved, estimate = state["committed"], state["reserved"], self.estimates[i]
        refused = [
            accounting.refuses(committed, reserved, estimate, ceiling, self.ops)
            for ceiling in self.ceilings
        ]
        after = {"reserved": reserved + estimate, f"held{i}": estimate}
        return _Start(admitted=self.z3.Not(self.z3.Or(refused)), after=after, amount=estimate)

    def finish(self, i: int, state: State) -> _Finish:
        held, actual = state[f"held{i}"], self.actuals[i]
        after = {
            "committed": state["committed"] + actual,
            "reserved": state["reserved"] - held,
            f"held{i}": self.z3.RealVal(0),
            "excess": state["excess"] + self.ops.max(actual - held, 0.0),
        }
        return _Finish(after=after, allowed=actual <= held if self.within else True)

    def broken(self, state: State) -> Any:
        slack = EPSILON if self.within else EPSILON + state["excess"]
        return self.z3.Or([state["committed"] > ceiling + slack for ceiling in self.ceilings])


class _CommitWithinCeiling(_RunLedgerModel):
    name = "committed_within_ceiling"
    statement = (
        "RunLedger: with every actual within its estimate, committed spend never passes "
        "any terminate ceiling (by more than the 1e-9 float tolerance)"
    )


class _OverageBounded(_RunLedgerModel):
    name = "overage_bounded_by_excess"
    statement = (
        "RunLedger: with any actuals, committed spend passes a ceiling by at most the "
        "excess (actual - estimate) of the dispatches that ran over their estimates "
        "(one such dispatch: its own excess)"
    )
    within = False


class _OneLimit(_Model):
    """A ledger with one terminate limit whose dispatches finish within what they hold."""

    def initial(self) -> State:
        zero = self.z3.RealVal(0)
        return {"committed": zero, "reserved": zero} | {f"held{i}": zero for i in range(self.k)}

    def unhold(self, reserved: Any, held: Any) -> Any:
        """What the ledger counts as reserved once ``held`` is no longer held."""
        return reserved - held

    def finish(self, i: int, state: State) -> _Finish:
        held, actual = state[f"held{i}"], self.actuals[i]
        after = {
            "committed": state["committed"] + actual,
            "reserved": self.unhold(state["reserved"], held),
            f"held{i}": self.z3.RealVal(0),
        }
        return _Finish(after=after, allowed=actual <= held)


class _CarveWithinCeiling(_OneLimit):
    """A parent run's ledger (one terminate limit) carving children and running activities."""

    name = "carves_within_parent_ceiling"
    statement = (
        "carve: a child that is not refused outright is carved at most what the parent has "
        "left (its ledger never refuses the carve), and the parent's committed spend (its "
        "own and its finished children's) plus its open carves and reservations never pass "
        "its ceiling, children spending within their allowances; for any fraction in (0, 1] "
        "and for auto (with or without the child's own cap)"
    )
    start_action = "carve"

    def __init__(self, z3: Any, ops: Ops, k: int) -> None:
        super().__init__(z3, ops, k)
        self.ceiling = self.real("ceiling")
        self.estimates = [self.real(f"estimate_{i + 1}") for i in range(k)]
        self.actuals = [self.real(f"actual_{i + 1}") for i in range(k)]
        self.children = self.special = [self.flag(f"child_{i + 1}") for i in range(k)]
        self.fraction = self.real("fraction")
        self.auto, self.capped = self.flag("auto"), self.flag("capped")
        self.cap = self.real("cap")
        self.assumptions += [self.fraction > 0, self.fraction <= 1]

    def carve(self, state: State, estimate: Any) -> tuple[Any, Any]:
        """Whether ``carving.carve`` refuses a child outright, and its carve of tokens."""
        z3, ops = self.z3, self.ops
        remaining = accounting.headroom(self.ceiling, state["committed"], state["reserved"])
        left = remaining - estimate  # carving.carve: remaining - base.get(resource)
        running = self.open_count(state, lambda j: self.children[j])

        def auto(n: int) -> Any:
            capped = carving.FairShare(running=n, caps={"tokens": self.cap})
            uncapped = carving.FairShare(running=n, caps={})
            return z3.If(
                self.capped,
                carving.share(capped, "tokens", left, estimate, ops),
                carving.share(uncapped, "tokens", left, estimate, ops),
            )

        fraction = carving.share(self.fraction, "tokens", left, estimate, ops)
        give = z3.If(self.auto, self.by_count(running, self.k - 1, auto), fraction)
        return carving.starved("tokens", left), give

    def start(self, i: int, state: State) -> _Start:
        z3 = self.z3
        committed, reserved, estimate = state["committed"], state["reserved"], self.estimates[i]
        starved, give = self.carve(state, estimate)
        child = self.children[i]
        amount = z3.If(child, give, estimate)
        refused = accounting.refuses(committed, reserved, amount, self.ceiling, self.ops)
        admitted = z3.And(z3.Not(refused), z3.Not(z3.And(child, starved)))
        misfit = z3.And(child, z3.Not(starved), refused)
        after = {"reserved": reserved + amount, f"held{i}": amount}
        return _Start(admitted=admitted, after=after, amount=amount, breaks=misfit)

    def broken(self, state: State) -> Any:
        return state["committed"] + state["reserved"] > self.ceiling + EPSILON


class _LeaseWithinLeft(_OneLimit):
    """The ledger book: one terminate counter, plain reservations and leases, settles."""

    name = "lease_grants_within_left"
    statement = (
        "book: a lease whose minimum fits what is left is granted at most what is left "
        "(never refused), and the counter's committed spend plus what open reservations "
        "and leases hold never passes the ceiling by more than (k + 1) x 1e-9 (the float "
        "tolerance, and the residue each settle may drop), for any max_share in (0, 1]"
    )
    start_action = "lease"
    finish_action = "settle"

    def __init__(self, z3: Any, ops: Ops, k: int) -> None:
        super().__init__(z3, ops, k)
        self.ceiling = self.real("ceiling")
        self.wanted = [self.real(f"wanted_{i + 1}") for i in range(k)]
        self.minimums = [self.real(f"minimum_{i + 1}") for i in range(k)]
        self.actuals = [self.real(f"actual_{i + 1}") for i in range(k)]
        self.leases = self.special = [self.flag(f"lease_{i + 1}") for i in range(k)]
        self.max_share = self.real("max_share")
        self.assumptions += [self.max_share > 0, self.max_share <= 1]

    def start(self, i: int, state: State) -> _Start:
        z3 = self.z3
        committed, reserved = state["committed"], state["reserved"]
        holders = 1 + self.open_count(state, lambda j: self.leases[j])

        def grant(n: int) -> Any:
            return book.lease_grant(
                self.wanted[i],
                self.ceiling,
                committed,
                reserved,
                n,
                self.max_share,
                self.minimums[i],
                self.ops,
            )

        leased = self.by_count(holders, self.k, lambda n: grant(max(n, 1)))
        amount = z3.If(self.leases[i], leased, self.wanted[i])
        refused = book.shared_refuses(committed, reserved, amount, self.ceiling)
        left = self.ceiling - committed - reserved
        misfit = z3.And(self.leases[i], self.minimums[i] <= left, refused)
        after = {"reserved": reserved + amount, f"held{i}": amount}
        return _Start(admitted=z3.Not(refused), after=after, amount=amount, breaks=misfit)

    def unhold(self, reserved: Any, held: Any) -> Any:
        return book._clean(reserved - held, self.ops)

    def broken(self, state: State) -> Any:
        held = self.z3.Sum([state[f"held{i}"] for i in range(self.k)])
        return state["committed"] + held > self.ceiling + (self.k + 1) * EPSILON


PROPERTIES: tuple[type[_Model], ...] = (
    _CommitWithinCeiling,
    _OverageBounded,
    _CarveWithinCeiling,
    _LeaseWithinLeft,
)
"""The properties :func:`prove_accounting` checks, in order."""


def solver_ops(z3: Any) -> Ops:
    """The rules' operations over Z3 terms (``max``/``min`` pick as the builtins do)."""
    return Ops(
        either=z3.Or,
        max=lambda a, b: z3.If(b > a, b, a),
        min=lambda a, b: z3.If(b < a, b, a),
        if_then_else=z3.If,
    )


@dataclass
class _Unrolled:
    """The k-dispatch interleaving as solver constraints, and what to read back."""

    constraints: list[Any]
    broken: Any
    actions: list[Any]
    states: list[State]
    starts: list[list[_Start]]


def _unroll(model: _Model, steps: int) -> _Unrolled:
    """Every interleaving of ``steps`` moves (start, finish or idle) of ``model.k`` dispatches."""
    z3, k = model.z3, model.k
    state: State = model.initial() | {f"status{i}": z3.IntVal(_PENDING) for i in range(k)}
    constraints, broken = list(model.assumptions), []
    actions: list[Any] = []
    states: list[State] = []
    all_starts: list[list[_Start]] = []
    for t in range(steps):
        action = z3.Int(f"action@{t}")  # i < k: start i; k + i: finish i; 2k: idle
        starts = [model.start(i, state) for i in range(k)]
        finishes = [model.finish(i, state) for i in range(k)]
        constraints += [action >= 0, action <= 2 * k]
        moves = [_start_move(z3, i, state, s) for i, s in enumerate(starts)]
        # dispatches have free inputs each, so they may start in order without loss
        moves = [
            (z3.And(allowed, state[f"status{i - 1}"] != _PENDING) if i else allowed, after)
            for i, (allowed, after) in enumerate(moves)
        ]
        moves += [_finish_move(z3, i, state, f) for i, f in enumerate(finishes)]
        for number, (allowed, _) in enumerate(moves):
            constraints.append(z3.Implies(action == number, allowed))
        if actions:  # once idle, idle to the end: a shorter run is a prefix
            constraints.append(z3.Implies(actions[-1] == 2 * k, action == 2 * k))
        following: State = {}
        for key, now in state.items():
            value = now
            for number in range(2 * k - 1, -1, -1):
                value = z3.If(action == number, moves[number][1].get(key, now), value)
            fresh = (z3.Int if key.startswith("status") else z3.Real)(f"{key}@{t + 1}")
            constraints.append(fresh == value)
            following[key] = fresh
        broken.append(z3.Or([z3.And(action == i, s.breaks) for i, s in enumerate(starts)]))
        broken.append(model.broken(following))
        actions.append(action)
        states.append(following)
        all_starts.append(starts)
        state = following
    return _Unrolled(constraints, z3.Or(broken), actions, states, all_starts)


def _start_move(z3: Any, i: int, state: State, start: _Start) -> tuple[Any, State]:
    admitted = start.admitted
    after = {key: z3.If(admitted, value, state[key]) for key, value in start.after.items()}
    after[f"status{i}"] = z3.If(admitted, _OPEN, _DONE)
    return state[f"status{i}"] == _PENDING, after


def _finish_move(z3: Any, i: int, state: State, finish: _Finish) -> tuple[Any, State]:
    allowed = z3.And(state[f"status{i}"] == _OPEN, finish.allowed)
    return allowed, finish.after | {f"status{i}": z3.IntVal(_DONE)}


def _number(z3: Any, model: Any, term: Any) -> float:
    value = model.eval(term, model_completion=True)
    if z3.is_true(value) or z3.is_false(value):
        return 1.0 if z3.is_true(value) else 0.0
    return float(value.as_fraction())


def _holds(z3: Any, found: Any, condition: Any) -> bool:
    return bool(z3.is_true(found.eval(z3.BoolVal(True) == condition, model_completion=True)))


def _counterexample(z3: Any, model: _Model, run: _Unrolled, found: Any) -> Counterexample:
    """Read the breaking interleaving back, up to the first step that breaks the property."""
    inputs = {name: _number(z3, found, term) for name, term in model.inputs.items()}
    steps: list[Step] = []
    for t, action in enumerate(run.actions):
        number = found.eval(action, model_completion=True).as_long()
        state = run.states[t]
        if number < 2 * model.k:
            steps.append(_step(z3, model, run, found, t, number))
        start_broke = number < model.k and _holds(z3, found, run.starts[t][number].breaks)
        if start_broke or _holds(z3, found, model.broken(state)):
            break
    return Counterexample(inputs=inputs, steps=steps)


def _step(z3: Any, model: _Model, run: _Unrolled, found: Any, t: int, number: int) -> Step:
    k, state = model.k, run.states[t]
    if number < k:
        start = run.starts[t][number]
        dispatch, amount = number, start.amount
        special = model.special and _holds(z3, found, model.special[dispatch])
        action = model.start_action if special else "reserve"
        admitted: bool | None = _holds(z3, found, start.admitted)
    else:
        dispatch = number - k
        action, amount, admitted = model.finish_action, model.actuals[dispatch], None
    return Step(
        action=action,
        dispatch=dispatch + 1,
        amount=_number(z3, found, amount),
        admitted=admitted,
        committed=_number(z3, found, state["committed"]),
        reserved=_number(z3, found, state["reserved"]),
    )


def _robust(z3: Any, model: _Model, solver: Any) -> Any:
    """A counterexample with whole-number amounts if there is one (replays exactly in floats)."""
    solver.push()
    solver.set("timeout", _ROBUST_TIMEOUT_MS)
    amounts = [
        term
        for name, term in model.inputs.items()
        if z3.is_real(term) and name not in ("fraction", "max_share")
    ]
    solver.add([z3.IsInt(term) for term in amounts])
    found = solver.model() if solver.check() == z3.sat else None
    solver.pop()
    return found


def prove(prop: type[_Model], k: int, timeout_s: float | None = PROOF_TIMEOUT_S) -> ProofResult:
    """Check one property for every interleaving of ``k`` dispatches.

    Args:
        prop: One of :data:`PROPERTIES`.
        k: How many dispatches (each started and finished at most once: 2k steps).
        timeout_s: The most the solver may take (``None``: no limit); past it, the
            outcome is ``unknown`` with ``reason`` ``timeout``.

    Returns:
        The outcome, with a counterexample when the property fails.

    """
    z3 = load_z3()
    began = time.perf_counter()
    model = prop(z3, solver_ops(z3), k)
    run = _unroll(model, 2 * k)
    solver = z3.Solver()
    if timeout_s is not None:
        solver.set("timeout", max(1, int(timeout_s * 1000)))
    solver.add(run.constraints)
    solver.add(run.broken)
    verdict = solver.check()
    counterexample = None
    if verdict == z3.sat:
        found = solver.model()
        found = _robust(z3, model, solver) or found
        counterexample = _counterexample(z3, model, run, found)
    outcome: Outcome = "unknown"
    reason = ""
    if verdict == z3.unsat:
        outcome = "proved"
    elif counterexample is not None:
        outcome = "counterexample"
    else:
        reason = str(solver.reason_unknown()) or "unknown"
        if reason == "canceled":  # what z3 says when its timeout stops it
            reason = "timeout"
    seconds = time.perf_counter() - began
    return ProofResult(prop.name, prop.statement, k, outcome, counterexample, seconds, reason)


def prove_accounting(k: int = 3, timeout_s: float | None = PROOF_TIMEOUT_S) -> list[ProofResult]:
    """Check every accounting property for every interleaving of ``k`` dispatches.

    Args:
        k: How many dispatches to interleave (the solver time grows quickly with it).
        timeout_s: The most each property's solver run may take (``None``: no limit);
            past it, that property is ``unknown`` (not proved).

    Returns:
        One result per property of :data:`PROPERTIES`.

    """
    if k < 1:
        raise ValueError("k is at least 1")
    return [prove(prop, k, timeout_s) for prop in PROPERTIES]
