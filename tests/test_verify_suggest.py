"""verify --suggest: the tightest limits that halt an incident early and pass the normal runs."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from examples.agents import Executor, Planner, PlanRequest, call_llm, vector_search
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from conftest import RECORDED, ROOT, Recorded
from temporal_governor import GovernorPlugin, Policy, attribution
from temporal_governor import cli as cli_module
from temporal_governor.cli import main as cli
from temporal_governor.review import fetch_tree, load_histories, review
from temporal_governor.verify import (
    Dimension,
    DispatchPoint,
    RunTrace,
    TreeTrace,
    suggest_limits,
)
from temporal_governor.verify._suggest import readable_at_least
from temporal_governor.verify._traces import dimensions_of

pytest.importorskip("z3")

# -- the pure solver on hand-made traces -----------------------------------------------------


def _point(index: int, need: dict[str, float], agent: str = "a", **kw: Any) -> DispatchPoint:
    return DispatchPoint(
        index=index,
        workflow_id=f"wf-{agent}",
        run_id=f"run-{agent}",
        agent=agent,
        position=index,
        label="activity tool",
        key=f"activity:{index}:tool",
        need=need,
        saved={"tokens": 1000.0 - 100 * index, "cost_usd": 0.0, "tool_calls": 10.0 - index},
        **kw,
    )


def _tokens(current: float | None = 1000, agent: str = "a") -> Dimension:
    path = ("agents", agent, "quotas", "max_tokens_per_task")
    return Dimension(agent=agent, metric="tokens", path=path, current=current)


def _iterations(current: float | None = None) -> Dimension:
    path = ("agents", "a", "loop_detection", "max_iterations")
    return Dimension(agent="a", metric="iterations", path=path, current=current)


def _normal(**peak: float) -> list[RunTrace]:
    return [RunTrace(workflow_id="n", run_id="n1", agent="a", peak=peak)]


def _incident(*needs: dict[str, float], halted_at: int | None = None) -> TreeTrace:
    points = [_point(i, need, halted=i == halted_at) for i, need in enumerate(needs, start=1)]
    return TreeTrace(root_workflow_id="incident", dispatches=points)


def test_tightest_limit_over_the_normal_peak_halts_the_first_dispatch_above_it() -> None:
    incident = _incident({"tokens": 50}, {"tokens": 105}, {"tokens": 120}, {"tokens": 900})
    suggestion = suggest_limits(incident, _normal(tokens=100), [_tokens()])
    [change] = suggestion.changes
    assert change.suggested == 110  # 100 + 10 %, already readable
    assert change.current == 1000 and change.normal_peak == 100
    assert suggestion.stop is not None and suggestion.stop.index == 3
    assert suggestion.saved == {"tokens": 700.0, "cost_usd": 0.0, "tool_calls": 7.0}
    assert suggestion.patch() == {"agents": {"a": {"quotas": {"max_tokens_per_task": 110}}}}
    assert suggestion.separated and suggestion.solver_queries == 1


def test_margin_and_readable_rounding() -> None:
    incident = _incident({"tokens": 1_400}, {"tokens": 1_600}, {"tokens": 1_700})
    suggestion = suggest_limits(incident, _normal(tokens=1_012), [_tokens(10_000)], margin=0.5)
    assert suggestion.changes[0].suggested == 1_600  # 1,518 rounded up to two digits
    assert suggestion.stop is not None and suggestion.stop.index == 3  # 1,600 does not exceed it


@pytest.mark.parametrize(
    ("value", "integer", "expected"),
    [
        (8_079.5, True, 8_100),
        (4.4, True, 5),
        (4.4, False, 4.4),
        (0.0231, False, 0.024),
        (0, True, 0),
        (110.001, True, 120),
        (100 * 1.1, True, 110),
        (99, True, 99),
        (1_000_001, True, 1_100_000),
    ],
)
def test_readable_at_least(value: float, integer: bool, expected: float) -> None:
    assert readable_at_least(value, integer) == pytest.approx(expected)


def test_never_loosens_a_limit_already_below_the_margin() -> None:
    incident = _incident({"tokens": 50}, {"tokens": 99}, {"tokens": 150}, halted_at=3)
    suggestion = suggest_limits(incident, _normal(tokens=95), [_tokens(current=100)])
    assert suggestion.changes == [] and not suggestion.separated
    assert "already halts the incident at dispatch 3" in suggestion.reason
    [candidate] = suggestion.candidates
    assert candidate.suggested is None  # 105 would loosen 100


def test_an_incident_that_looks_normal_is_not_separated() -> None:
    incident = _incident({"tokens": 50, "iterations": 1}, {"tokens": 90, "iterations": 2})
    suggestion = suggest_limits(
        incident, _normal(tokens=100, iterations=2), [_tokens(), _iterations()]
    )
    assert not suggestion.separated and suggestion.stop is None
    assert "no limit separates" in suggestion.reason
    assert "\n# no suggestion: no limit separates" in "\n" + suggestion.to_yaml()


def test_the_dimension_that_halts_earliest_wins_and_ties_prefer_budgets() -> None:
    needs = [{"tokens": 10.0 * i, "iterations": float(i)} for i in range(1, 9)]
    # iterations: normal 3 -> 4, halts dispatch 5; tokens: normal 60 -> 66, halts dispatch 7
    early = suggest_limits(
        _incident(*needs), _normal(tokens=60, iterations=3), [_tokens(), _iterations()]
    )
    assert [c.field for c in early.changes] == ["agents.a.loop_detection.max_iterations"]
    assert early.stop is not None and early.stop.index == 5
    # tokens: normal 30 -> 33, halts dispatch 4 as early as iterations (normal 3 -> 4... 5)
    tie = suggest_limits(
        _incident(*needs), _normal(tokens=30, iterations=2), [_iterations(), _tokens()]
    )
    assert [c.metric for c in tie.changes] == ["tokens"]
    assert tie.stop is not None and tie.stop.index == 4
    assert {c.field: c.stops_at for c in tie.candidates} == {
        "agents.a.loop_detection.max_iterations": 4,
        "agents.a.quotas.max_tokens_per_task": 4,
    }


def test_limits_of_one_agent_never_halt_another_agents_dispatches() -> None:
    points = [_point(1, {"tokens": 500}, agent="b"), _point(2, {"tokens": 500}, agent="a")]
    incident = TreeTrace(root_workflow_id="incident", dispatches=points)
    suggestion = suggest_limits(incident, _normal(tokens=100), [_tokens()])
    assert suggestion.stop is not None and suggestion.stop.index == 2
    assert suggestion.unmodelled == ["b"]


def test_patch_carries_the_fields_set_with_a_change() -> None:
    dimension = Dimension(
        agent="a",
        metric="tokens",
        path=("agents", "a", "quotas", "max_tokens_per_task", "limit"),
        also={"on_breach": "terminate"},
    )
    assert dimension.field == "agents.a.quotas.max_tokens_per_task.limit"
    suggestion = suggest_limits(_incident({"tokens": 500}), _normal(tokens=100), [dimension])
    spec = suggestion.patch()["agents"]["a"]["quotas"]["max_tokens_per_task"]
    assert spec == {"limit": 110, "on_breach": "terminate"}


def _suggest_tool_calls(policy: Policy, agent: str, workflow_type: str) -> Any:
    """A pure suggestion for ``workflow_type`` whose incident only grows its tool calls."""
    points = [
        _point(i, {"tool_calls": float(i), "tokens": 100.0 * i}, agent=workflow_type)
        for i in range(1, 11)
    ]
    normal = [RunTrace(workflow_id="n", run_id="n", agent=workflow_type, peak={"tool_calls": 2})]
    dimensions = dimensions_of(policy, [workflow_type])
    suggestion = suggest_limits(
        TreeTrace(root_workflow_id="i", dispatches=points), normal, dimensions
    )
    assert [c.metric for c in suggestion.changes] == ["tool_calls"]
    return suggestion


def test_a_new_limit_under_alerting_defaults_is_written_to_terminate() -> None:
    """H1: a new field under ``defaults.on_breach: alert`` would only alert once merged."""
    document: dict[str, Any] = {
        "defaults": {"on_breach": "alert"},
        "agents": {
            "planner": {
                "quotas": {"max_tokens_per_task": {"limit": 50_000, "on_breach": "terminate"}}
            }
        },
    }
    suggestion = _suggest_tool_calls(Policy.from_dict(document), "planner", "planner")
    merged = Policy.from_dict(_merge(document, suggestion.patch()))
    spec = merged.agents["planner"].quotas.max_tool_calls_per_task
    assert spec is not None and spec.limit == 3
    assert merged.on_breach_of(spec) == "terminate"
    # read back as the model reads the merged policy: a terminate ceiling of 3 now
    [dimension] = [d for d in dimensions_of(merged, ["planner"]) if d.metric == "tool_calls"]
    assert dimension.current == 3 and dimension.also == {}
    # and that ceiling halts the incident where the suggestion said it would
    assert suggestion.stop is not None and suggestion.stop.need["tool_calls"] > dimension.current


def test_a_new_limit_under_terminating_defaults_stays_a_bare_number() -> None:
    document: dict[str, Any] = {"agents": {"a": {"quotas": {"max_tokens_per_task": 50_000}}}}
    suggestion = _suggest_tool_calls(Policy.from_dict(document), "a", "a")
    assert suggestion.patch() == {"agents": {"a": {"quotas": {"max_tool_calls_per_task": 3}}}}


def test_the_patch_for_an_agent_name_with_dots_targets_that_agent() -> None:
    """M6: the patch is built from path segments, not by splitting a dotted field."""
    document: dict[str, Any] = {
        "agents": {
            "team.exec": {"workflow_types": ["Exec"], "quotas": {"max_tokens_per_task": 50_000}}
        }
    }
    suggestion = _suggest_tool_calls(Policy.from_dict(document), "team.exec", "Exec")
    patch = suggestion.patch()
    assert patch == {"agents": {"team.exec": {"quotas": {"max_tool_calls_per_task": 3}}}}
    assert suggestion.changes[0].field == "agents['team.exec'].quotas.max_tool_calls_per_task"
    merged = Policy.from_dict(_merge(document, patch))
    assert set(merged.agents) == {"team.exec"}
    spec = merged.agents["team.exec"].quotas.max_tool_calls_per_task
    assert spec is not None and spec.limit == 3 and merged.on_breach_of(spec) == "terminate"


def test_dimensions_follow_the_policy_spelling_of_each_limit() -> None:
    policy = Policy.model_validate(
        {
            "agents": {
                "a": {
                    "quotas": {
                        "max_tokens_per_task": {"limit": 500, "warn_at": 0.5},
                        "max_cost_usd_per_task": {"limit": 2, "on_breach": "alert"},
                        "max_tool_calls_per_task": 9,
                    },
                    "loop_detection": {"max_iterations": 40},
                },
                "b": {"version": "1"},  # inherits defaults.quotas: no quota dimension
            }
        }
    )
    by_field = {d.field: d for d in dimensions_of(policy, ["a", "b", "unknown"])}
    assert by_field["agents.a.quotas.max_tokens_per_task.limit"].current == 500
    cost = by_field["agents.a.quotas.max_cost_usd_per_task.limit"]
    assert cost.current is None and not cost.integer
    assert cost.also == {"on_breach": "terminate"}
    assert by_field["agents.a.quotas.max_tool_calls_per_task"].current == 9
    assert by_field["agents.a.loop_detection.max_iterations"].current == 40
    assert not any(".b.quotas." in name for name in by_field)
    assert "agents.b.loop_detection.max_iterations" in by_field


# -- end to end: the demo's runaway against normal runs, on the dev server -------------------

DEMO = ROOT / "examples" / "governance.yaml"
POLICY = Policy.from_yaml(DEMO)
WORKFLOWS = [Planner, Executor]
NORMAL_GOALS = ("summarise Q3", "draft the memo")


async def _write_tree(client: Client, workflow_id: str, folder: Path) -> Path:
    folder.mkdir()
    for i, history in enumerate(await fetch_tree(client, workflow_id)):
        (folder / f"{i:03d}.json").write_text(history.to_json())
    return folder


@pytest.fixture(scope="module")
async def demo(env, tmp_path_factory):
    """The demo's normal requests and its runaway, run with the demo policy; their histories."""
    client = Client(
        env.client.service_client, namespace=env.client.namespace, plugins=[GovernorPlugin(POLICY)]
    )
    task_queue = f"suggest-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, POLICY, WORKFLOWS))
    tag = uuid.uuid4().hex[:6]
    requests = {f"normal-{i}-{tag}": PlanRequest(goal=g) for i, g in enumerate(NORMAL_GOALS)}
    requests[f"runaway-{tag}"] = PlanRequest(goal="perfect answer", runaway=True)
    folder = tmp_path_factory.mktemp("suggest")
    async with Worker(
        client, task_queue=task_queue, workflows=WORKFLOWS, activities=[call_llm, vector_search]
    ):
        for workflow_id, request in requests.items():
            with attribution(tenant="acme", owner="alice@acme"):
                handle = await client.start_workflow(
                    Planner.run, request, id=workflow_id, task_queue=task_queue
                )
            if request.runaway:
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
            else:
                await handle.result()
    trees = {wid: await _write_tree(client, wid, folder / wid) for wid in requests}
    runaway = trees.pop(f"runaway-{tag}")
    return {"incident": (f"runaway-{tag}", runaway), "normal": trees, "folder": folder}


def _suggest(*args: str) -> Any:
    base = ["verify", str(DEMO), "--suggest", "--workflows", "examples.agents"]
    return CliRunner().invoke(cli, [*base, *args])


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        old = merged.get(key)
        both = isinstance(old, dict) and isinstance(value, dict)
        merged[key] = _merge(old, value) if both else value
    return merged


async def _review(workflow_id: str, folder: Path, policy: Policy) -> Any:
    histories = load_histories(sorted(folder.glob("*.json")), workflow_id)
    return await review(
        workflow_id, policy=policy, workflows=WORKFLOWS, histories=histories, sandboxed=False
    )


def test_suggested_patch_halts_the_runaway_where_reported_and_passes_normal_runs(
    demo, tmp_path: Path
) -> None:
    incident_id, incident = demo["incident"]
    normal_args = [arg for folder in demo["normal"].values() for arg in ("--normal", str(folder))]
    result = _suggest("--incident", str(incident), *normal_args, "--json")
    assert result.exit_code == 0, result.output
    suggestion = json.loads(result.output)
    stop, patch = suggestion["stop"], suggestion["patch"]
    assert suggestion["incident"] == incident_id  # the root's id, read from its history file
    assert stop["index"] < suggestion["halted_at"]["index"]
    assert suggestion["saved"]["tokens"] > 0 and suggestion["saved"]["tool_calls"] > 0
    for change in suggestion["changes"]:  # tightened only, over the normal runs with margin
        assert change["suggested"] >= change["normal_peak"] * 1.1
        assert change["current"] is None or change["suggested"] < change["current"]
    # the patch merged into the policy: the incident now halts at the reported dispatch...
    patched_file = tmp_path / "patched.yaml"
    patched_file.write_text(yaml.safe_dump(_merge(yaml.safe_load(DEMO.read_text()), patch)))
    patched = Policy.from_yaml(patched_file)
    replayed = asyncio.run(_review(incident_id, incident, patched))
    first = next(d for d in replayed.decisions if d.kind == "breach")
    assert (first.workflow_id, first.key) == (stop["workflow_id"], stop["key"])
    # ...and every normal run replays under it without a breach (nor a changed command)
    for workflow_id, folder in demo["normal"].items():
        report = asyncio.run(_review(workflow_id, folder, patched))
        assert report.nondeterminism == [] and report.breaches == []
        assert all(run.status == "completed" for run in report.runs)
    # the terminal output is that patch, explained in YAML comments
    text = _suggest("--incident", str(incident), *normal_args)
    assert text.exit_code == 0, text.output
    assert yaml.safe_load(text.output) == patch
    assert f"# would halt at dispatch {stop['index']}:" in text.output


def test_an_incident_like_the_normal_runs_exits_1_with_the_reason(demo) -> None:
    folders = [str(folder) for folder in demo["normal"].values()]
    result = _suggest("--incident", folders[0], *[a for f in folders for a in ("--normal", f)])
    assert result.exit_code == 1, result.output
    assert "no limit separates the incident from the normal runs" in result.output


def test_suggest_usage_errors(tmp_path: Path) -> None:
    result = _suggest("--normal", str(tmp_path))
    assert result.exit_code == 2 and "--suggest needs --incident" in result.output
    plain = CliRunner().invoke(cli, ["verify", str(DEMO), "--incident", "x"])
    assert plain.exit_code == 2 and "--incident and --normal go with --suggest" in plain.output


def test_a_mistyped_history_path_is_no_such_file_not_a_workflow_id(tmp_path: Path) -> None:
    """L3: a path-like value that does not exist never goes to the server (exit 2, not 3)."""
    for missing in (str(tmp_path / "nowhere"), "incident.json", "nowhere/histories"):
        result = _suggest("--incident", missing, "--normal", "demo-normal")
        assert result.exit_code == 2, result.output
        assert f"--incident {missing!r}: no such file or folder" in result.output
    result = _suggest("--incident", str(tmp_path), "--normal", "histories/normal")
    assert result.exit_code == 2, result.output
    assert "--normal 'histories/normal': no such file or folder" in result.output


def test_an_empty_folder_is_reported_under_the_option_given(tmp_path: Path) -> None:
    """L2: an empty --normal folder is named as --normal (not --history)."""
    sources = cli_module._Sources(POLICY, WORKFLOWS, None, None)
    for option in ("--incident", "--normal"):
        with pytest.raises(cli_module.CliFailure) as failure:
            asyncio.run(sources.histories(option, [str(tmp_path)], None))
        assert failure.value.code == 2
        assert failure.value.message.startswith(f"{option} {str(tmp_path)!r}: no *.json")


def test_a_history_that_no_longer_replays_is_bad_input_with_the_usual_causes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """M7: exit 2 (1 means "nothing separates the incident"), one line naming the causes."""

    async def nondeterministic(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(nondeterminism=["[TMPRL1100] Nondeterminism error: ...\nmore"])

    monkeypatch.setattr(cli_module, "review", nondeterministic)
    sources = cli_module._Sources(POLICY, WORKFLOWS, None, None)
    with pytest.raises(cli_module.CliFailure) as failure:
        asyncio.run(sources.review([SimpleNamespace(workflow_id="w")]))
    assert failure.value.code == 2
    message = failure.value.message
    assert "\n" not in message and message.startswith("replay failed: [TMPRL1100]")
    assert "workflow code changed" in message and "control keys" in message
