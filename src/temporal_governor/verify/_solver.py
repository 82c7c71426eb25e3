"""The Z3 solver, imported only when a check runs, and the few queries the checks ask.

``z3-solver`` is the optional extra ``verify``: the rest of the package works without it,
and :func:`load_z3` says how to install it when it is missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ..errors import GovernorError
from ._findings import Number

QUERY_TIMEOUT_MS = 10_000
"""The longest one SMT query may take; a query that times out yields no finding."""

INSTALL_HINT = "install temporal-governor[verify] (pip install 'temporal-governor[verify]')"


class VerifierUnavailable(GovernorError):
    """The Z3 solver the verifier needs is not installed."""


def load_z3() -> Any:
    """The ``z3`` module, or :class:`VerifierUnavailable` naming the extra to install."""
    try:
        return importlib.import_module("z3")
    except ImportError as error:
        raise VerifierUnavailable(
            f"the policy verifier needs the Z3 solver: {INSTALL_HINT}"
        ) from error


class Smt:
    """One verification's access to Z3: fresh variables, queries, and their count."""

    def __init__(self) -> None:
        """Import Z3 (or raise :class:`VerifierUnavailable`)."""
        self.z3 = load_z3()
        self.queries = 0

    def amount(self, name: str, integer: bool) -> Any:
        """A fresh non-negative variable: an ``Int`` for counted units, else a ``Real``."""
        variable = self.z3.Int(name) if integer else self.z3.Real(name)
        return variable

    def maximum(self, objective: Any, constraints: Sequence[Any]) -> Number | None:
        """The largest value of ``objective`` under ``constraints``.

        Returns:
            The maximum, or ``None`` when the objective is unbounded (or nothing
            satisfies the constraints, or the solver timed out).

        """
        optimizer = self._optimizer(constraints)
        handle = optimizer.maximize(objective)
        if optimizer.check() != self.z3.sat:
            return None
        value = handle.value()
        numeral = self.z3.is_int_value(value) or self.z3.is_rational_value(value)
        return self.number(value) if numeral else None  # not a numeral: oo, or epsilon

    def minimum(self, objective: Any, constraints: Sequence[Any]) -> Number | None:
        """The smallest value of ``objective`` under ``constraints`` (``None``: none)."""
        optimizer = self._optimizer(constraints)
        optimizer.minimize(objective)
        if optimizer.check() != self.z3.sat:
            return None
        return self._value(optimizer.model(), objective)

    def model(self, constraints: Sequence[Any], *terms: Any) -> list[Number] | None:
        """The values of ``terms`` in a model of ``constraints`` (``None``: unsatisfiable)."""
        solver = self.z3.Solver()
        solver.set(timeout=QUERY_TIMEOUT_MS)
        solver.add(*constraints)
        self.queries += 1
        if solver.check() != self.z3.sat:
            return None
        model = solver.model()
        return [self._value(model, term) for term in terms]

    def number(self, value: Any) -> Number:
        """A Z3 numeral as an ``int`` when whole, else a ``float``."""
        if self.z3.is_int_value(value):
            return int(value.as_long())
        fraction = value.as_fraction()
        return int(fraction) if fraction.denominator == 1 else float(fraction)

    def _optimizer(self, constraints: Sequence[Any]) -> Any:
        optimizer = self.z3.Optimize()
        optimizer.set(timeout=QUERY_TIMEOUT_MS)
        optimizer.add(*constraints)
        self.queries += 1
        return optimizer

    def _value(self, model: Any, term: Any) -> Number:
        return self.number(model.eval(term, model_completion=True))
