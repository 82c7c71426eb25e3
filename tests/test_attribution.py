"""Attribution cannot be shed: a run started from inside a governed activity pays as the
run that started it, unless the code names another payer explicitly."""

from __future__ import annotations

from attribution_workflows import ATTRIBUTION_ACTIVITIES, ATTRIBUTION_WORKFLOWS, SideStarter
from temporal_governor import Policy, attribution


async def test_a_run_started_from_a_governed_activity_inherits_its_payer(governed) -> None:
    async with governed(Policy.from_dict({}), ATTRIBUTION_WORKFLOWS, ATTRIBUTION_ACTIVITIES) as g:
        with attribution(tenant="acme", owner="alice@acme"):
            handle = await g.start(SideStarter.run, "")
        side = await handle.result()
    assert side["tenant"] == "acme" and side["owner"] == "alice@acme"
    assert side["started_by"] == [handle.id]  # the caller is recorded


async def test_an_explicit_attribution_in_the_activity_wins_and_still_records_the_caller(
    governed,
) -> None:
    async with governed(Policy.from_dict({}), ATTRIBUTION_WORKFLOWS, ATTRIBUTION_ACTIVITIES) as g:
        with attribution(tenant="acme", owner="alice@acme"):
            handle = await g.start(SideStarter.run, "globex")
        side = await handle.result()
    assert side["tenant"] == "globex" and side["owner"] is None
    assert side["started_by"] == [handle.id]


async def test_a_policy_can_refuse_runs_that_name_no_payer(governed) -> None:
    from temporalio.client import WorkflowFailureError

    from attribution_workflows import WhoPays
    from temporal_governor import BreachDetails

    p = Policy.from_dict({"control": {"require_attribution": True}})
    async with governed(p, ATTRIBUTION_WORKFLOWS, ATTRIBUTION_ACTIVITIES) as g:
        try:
            await g.run(WhoPays.run)
        except WorkflowFailureError as failure:
            details = BreachDetails.from_error(failure)
        else:
            raise AssertionError("a run with no payer ran")
        with attribution(tenant="acme"):
            paid = await g.run(WhoPays.run)
        with attribution(tenant="acme", owner="alice@acme"):
            handle = await g.start(SideStarter.run, "")  # its side run inherits the payer
            side = await handle.result()
    assert details is not None and details.limit == "control.require_attribution"
    assert paid["tenant"] == "acme"
    assert side["tenant"] == "acme"
