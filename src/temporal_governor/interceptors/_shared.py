"""A governed run's side of the shared ledger: reserve, settle and release across runs."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import temporalio.workflow
from temporalio.common import RetryPolicy

from ..accounting import Refusal
from ..activities._ledger import LEDGER_ACTIVITY, LedgerCall
from ..scopes import SharedLimit, shared_limits
from ..workflows._ledger import ReserveResult

if TYPE_CHECKING:
    from ._run import GovernedRun

_CALL_TIMEOUT = timedelta(seconds=10)
_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=20,
)
_DEFAULT_RETRY_S = 0.5


class SharedBudget:
    """Reservations of one run in the scopes shared across runs (tenant, agent, tool ...)."""

    def __init__(self, run: GovernedRun) -> None:
        self.run = run
        self.settings = run.policy.shared
        self.open: set[str] = set()
        self._limits: dict[str | None, list[SharedLimit]] = {}
        self._owner = f"{run.info.workflow_id}/{run.info.run_id}"

    def limits_for(self, tool: str | None) -> list[SharedLimit]:
        """The shared limits of a dispatch of this run (``tool`` None for a child)."""
        if tool not in self._limits:
            attribution = self.run.context.attribution
            self._limits[tool] = shared_limits(
                self.run.policy,
                tenant=attribution.tenant,
                owner=attribution.owner,
                agent=self.run.agent,
                tool=tool,
            )
        return self._limits[tool]

    def applied(self) -> list[SharedLimit]:
        """Every shared limit seen so far, once each."""
        seen: dict[str, SharedLimit] = {}
        for limits in self._limits.values():
            for limit in limits:
                seen.setdefault(f"{limit.counter}|{limit.name}", limit)
        return list(seen.values())

    async def _call(self, update: str, request: dict[str, Any], update_id: str) -> Any:
        call = LedgerCall(
            ledger_id=self.settings.ledger_id,
            update=update,
            request=request,
            update_id=update_id,
            continue_as_new_after=self.settings.continue_as_new_after,
        )
        return await temporalio.workflow.execute_local_activity(
            LEDGER_ACTIVITY,
            call.model_dump(mode="json"),
            start_to_close_timeout=_CALL_TIMEOUT,
            retry_policy=_CALL_RETRY,
        )

    async def reserve(
        self, key: str, limits: list[SharedLimit], amounts: dict[str, float], dispatch: str
    ) -> str:
        """Reserve in every shared scope or none; wait or halt on refusal as the policy says.

        Returns:
            The ledger key of the reservation, to settle it with.
        """
        waited = 0.0
        attempt = 0
        needed: set[str] = {limit.resource for limit in limits}
        wanted: dict[str, float] = {r: float(amounts.get(r, 0.0)) for r in needed}
        while True:
            attempt += 1
            ledger_key = f"{self._owner}/{key}#{attempt}"
            request = {
                "key": ledger_key,
                "run": self._owner,
                "amounts": wanted,
                "limits": [limit.model_dump(mode="json") for limit in limits],
                "ttl_s": self.settings.reservation_ttl,
            }
            result = ReserveResult.model_validate(
                await self._call("reserve", request, f"reserve:{ledger_key}")
            )
            if result.granted:
                self.open.add(ledger_key)
                return ledger_key
            refusal = result.refusal
            assert refusal is not None
            left = self.settings.max_wait - waited
            if self.settings.on_refusal == "wait" and left > 0:
                pause = min(left, refusal.retry_after_s or _DEFAULT_RETRY_S)
                pause = max(pause, 0.05)
                self.run.note_wait(
                    key, refusal.limit, refusal.scope, refusal.observed, refusal.ceiling
                )
                await temporalio.workflow.sleep(pause)
                waited += pause
                continue
            self.run.halt_shared(
                key,
                Refusal(
                    limit=refusal.limit,
                    resource=refusal.resource,
                    scope=refusal.scope,
                    observed=refusal.observed,
                    ceiling=refusal.ceiling,
                    committed=refusal.observed - wanted.get(refusal.resource, 0.0),
                    overage=0.0,
                ),
                dispatch,
            )

    async def settle(self, ledger_key: str, actual: dict[str, float]) -> None:
        """Commit a dispatch's actual usage in the shared scopes and release the rest."""
        if ledger_key not in self.open:
            return
        self.open.discard(ledger_key)
        await self._call("settle", {"key": ledger_key, "actual": actual}, f"settle:{ledger_key}")

    async def release_all(self) -> None:
        """Release every open reservation of the run (it is ending)."""
        if not self.open:
            return
        self.open.clear()
        await self._call("release_run", {"run": self._owner}, f"release_run:{self._owner}")
