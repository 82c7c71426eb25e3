"""The replay check can fail: a history replayed under a policy that decides differently."""

from __future__ import annotations

from temporalio.worker import Replayer

from temporal_governor import GovernorPlugin, Policy
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

LOOSE = "agents: {Spender: {quotas: {max_tokens_per_task: 1000}}}\ntools: {spend: {estimate: {tokens: 100}}}"


async def test_replay_with_the_same_policy_passes_and_a_stricter_one_fails(governed) -> None:
    async with governed(Policy.from_yaml(LOOSE), ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Spender.run, Steps(tokens=[100] * 5))
        assert await handle.result() == 5
        history = await handle.fetch_history()
    same = Replayer(workflows=ALL_WORKFLOWS, plugins=[GovernorPlugin(Policy.from_yaml(LOOSE))])
    await same.replay_workflow(history)
    stricter = Policy.from_yaml(LOOSE.replace("1000", "300"))
    replayer = Replayer(workflows=ALL_WORKFLOWS, plugins=[GovernorPlugin(stricter)])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
