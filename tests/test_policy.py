"""The policy models and their loading boundary: plain unit tests, no Temporal needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from temporal_governor.errors import PolicyError
from temporal_governor.policy import (
    PER_TASK_LIMITS,
    AgentPolicy,
    Estimate,
    GlobalLimits,
    LimitSpec,
    Policy,
    Quotas,
)

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resource-governance.yaml"


@pytest.fixture(scope="module")
def sample() -> Policy:
    return Policy.from_yaml(SAMPLE)


# -- the published sample ---------------------------------------------------------------


def test_sample_loads_unchanged_from_a_path_and_from_a_string(sample: Policy) -> None:
    assert sample.source == str(SAMPLE)
    assert Policy.from_yaml(str(SAMPLE)) == sample
    assert Policy.from_yaml(SAMPLE.read_text()).source == "<text>"


def test_sample_global_limits(sample: Policy) -> None:
    assert sample.global_ == GlobalLimits(
        max_concurrent_tasks=5000, max_tokens_per_minute=2_000_000, max_tool_calls_per_minute=50_000
    )
    assert type(sample.global_.max_tokens_per_minute) is int
    assert type(sample.global_.max_tool_calls_per_minute) is int


def test_sample_planner(sample: Policy) -> None:
    planner = sample.agents["planner"]
    assert planner.version == "2.1.0"
    assert planner.workflow_types == []
    quotas = planner.quotas
    assert quotas.max_subtasks_per_task == LimitSpec(limit=25)
    assert quotas.max_tokens_per_task == LimitSpec(limit=50_000)
    assert quotas.max_tokens_per_minute == LimitSpec(limit=200_000)
    assert quotas.max_tool_calls_per_minute == LimitSpec(limit=5_000)
    assert quotas.max_cost_usd_per_task is None
    assert quotas.max_tool_calls_per_task is None
    assert quotas.max_child_workflows_per_task is None
    assert quotas.max_wall_time_per_task is None
    assert quotas.per_task() == {"tokens": LimitSpec(limit=50_000), "subtasks": LimitSpec(limit=25)}
    assert planner.throttle is not None
    assert (planner.throttle.rate_per_sec, planner.throttle.burst) == (50, 100)
    assert planner.priority is not None
    assert planner.priority.default_class == "high"
    assert planner.loop_detection.max_depth == 5
    assert planner.loop_detection.signature_window == 32
    assert planner.child_allowance == "auto"  # the default: a fair share per child
    assert planner.estimate == Estimate()


def test_sample_executor(sample: Policy) -> None:
    executor = sample.agents["executor"]
    assert executor.version == "1.4.3"
    assert executor.quotas.max_tokens_per_task == LimitSpec(limit=30_000)
    assert executor.quotas.max_tool_calls_per_task == LimitSpec(limit=100)
    assert executor.quotas.max_tool_calls_per_minute == LimitSpec(limit=10_000)
    assert executor.quotas.max_subtasks_per_task is None
    assert executor.quotas.max_tokens_per_minute is None
    assert executor.throttle is not None
    assert (executor.throttle.rate_per_sec, executor.throttle.burst) == (100, 200)
    assert executor.priority is not None
    assert executor.priority.default_class == "normal"
    assert executor.loop_detection.max_depth is None
    assert executor.loop_detection.signature_window is None


def test_sample_tools_and_defaults(sample: Policy) -> None:
    assert list(sample.tools) == ["vector-search"]
    search = sample.tools["vector-search"]
    assert search.max_qps == 2000
    assert search.max_concurrent_requests == 500
    assert search.priority_class == "high"
    assert search.counts_as_tool_call is True
    assert search.estimate == Estimate()
    assert sample.models == {}
    assert sample.defaults.on_breach == "terminate"
    assert sample.defaults.warn_at is None
    assert sample.defaults.quotas == Quotas()


def test_sample_round_trips_through_its_dump(sample: Policy) -> None:
    dumped = sample.model_dump(by_alias=True)
    assert "source" not in dumped
    assert "global" in dumped
    assert Policy.from_dict(dumped) == sample.model_copy(update={"source": "<dict>"})


def test_yaml_underscored_numbers_are_ints() -> None:
    policy = Policy.from_yaml("global: {max_tokens_per_minute: 2_000_000}")
    assert policy.global_.max_tokens_per_minute == 2_000_000
    assert type(policy.global_.max_tokens_per_minute) is int


# -- lookups -------------------------------------------------------------------------------

LOOKUPS = """
defaults:
  on_breach: alert
  warn_at: 0.75
  estimate: { tokens: 10 }
  quotas: { max_tokens_per_task: 999 }
  child_allowance: 0.25
models:
  gpt-x: { input_per_1k: 0.5, output_per_1k: 1.5 }
agents:
  planner:
    workflow_types: [PlannerWorkflow, PlannerV2]
    estimate: { tokens: 500, cost_usd: 0.01 }
    child_allowance: 0.5
    quotas:
      max_tokens_per_task: 1000
      max_cost_usd_per_task: { limit: 2.5, on_breach: terminate, warn_at: 0.5 }
      max_tool_calls_per_task: { limit: 7 }
      max_child_workflows_per_task: 40
      max_wall_time_per_task: 5m
  bare: { version: "0.1" }
tools:
  call_llm:
    activity_types: [call_llm_v2]
    counts_as_tool_call: false
    estimate: { tokens: 2500, tool_calls: 1 }
  search: { max_qps: 10 }
"""


@pytest.fixture(scope="module")
def lookups() -> Policy:
    return Policy.from_yaml(LOOKUPS)


def test_agent_for_by_name_and_by_workflow_types(lookups: Policy) -> None:
    planner = lookups.agents["planner"]
    assert lookups.agent_for("planner") == ("planner", planner)
    assert lookups.agent_for("PlannerWorkflow") == ("planner", planner)
    assert lookups.agent_for("PlannerV2") == ("planner", planner)
    assert lookups.agent_for("Unknown") is None


def test_tool_for_by_name_and_by_activity_types(lookups: Policy) -> None:
    llm = lookups.tools["call_llm"]
    assert lookups.tool_for("call_llm") == ("call_llm", llm)
    assert lookups.tool_for("call_llm_v2") == ("call_llm", llm)
    assert lookups.tool_for("nothing") is None
    assert not llm.counts_as_tool_call


def test_quotas_estimates_and_allowances_fall_back_to_defaults(lookups: Policy) -> None:
    assert lookups.quotas_for("PlannerV2") is lookups.agents["planner"].quotas
    assert lookups.quotas_for("bare") == lookups.defaults.quotas  # entry sets no quotas
    assert lookups.quotas_for("Unknown").per_task() == {"tokens": LimitSpec(limit=999)}
    assert lookups.estimate_for_activity("call_llm_v2") == Estimate(tokens=2500, tool_calls=1)
    assert lookups.estimate_for_activity("search") == Estimate(tokens=10)  # entry sets none
    assert lookups.estimate_for_activity("other") == Estimate(tokens=10)
    assert lookups.estimate_for_child("PlannerWorkflow") == Estimate(tokens=500, cost_usd=0.01)
    assert lookups.estimate_for_child("bare") == Estimate()
    assert lookups.estimate_for_child("Unknown") == Estimate()
    assert lookups.child_allowance_for("planner") == 0.5
    assert lookups.child_allowance_for("bare") == 0.25
    assert lookups.child_allowance_for("Unknown") == 0.25


def test_cost_from_the_price_table(lookups: Policy) -> None:
    assert lookups.cost_usd("gpt-x", 2000, 1000) == pytest.approx(2 * 0.5 + 1 * 1.5)
    assert lookups.cost_usd("gpt-x", 0, 0) == 0
    assert lookups.cost_usd("unpriced", 2000, 1000) is None
    assert lookups.cost_usd(None, 2000, 1000) is None


def test_on_breach_and_warn_at_inherit_from_defaults(lookups: Policy) -> None:
    quotas = lookups.agents["planner"].quotas
    assert quotas.max_tokens_per_task is not None
    assert quotas.max_cost_usd_per_task is not None
    assert lookups.on_breach_of(quotas.max_tokens_per_task) == "alert"
    assert lookups.warn_at_of(quotas.max_tokens_per_task) == 0.75
    assert lookups.on_breach_of(quotas.max_cost_usd_per_task) == "terminate"
    assert lookups.warn_at_of(quotas.max_cost_usd_per_task) == 0.5
    plain = Policy()
    assert plain.on_breach_of(LimitSpec(limit=1)) == "terminate"
    assert plain.warn_at_of(LimitSpec(limit=1)) is None


def test_bare_number_and_mapping_quotas_are_the_same_thing(lookups: Policy) -> None:
    quotas = lookups.agents["planner"].quotas
    assert quotas.max_tokens_per_task == LimitSpec(limit=1000, on_breach=None, warn_at=None)
    assert quotas.max_tool_calls_per_task == LimitSpec(limit=7)
    assert quotas.max_cost_usd_per_task == LimitSpec(limit=2.5, on_breach="terminate", warn_at=0.5)
    assert LimitSpec.model_validate(12) == LimitSpec(limit=12)
    assert quotas.per_task() == {
        "tokens": LimitSpec(limit=1000),
        "cost_usd": LimitSpec(limit=2.5, on_breach="terminate", warn_at=0.5),
        "tool_calls": LimitSpec(limit=7),
        "child_workflows": LimitSpec(limit=40),
        "wall_time_s": LimitSpec(limit=300),
    }


def test_per_task_limit_names() -> None:
    assert PER_TASK_LIMITS == {
        "max_tokens_per_task": "tokens",
        "max_cost_usd_per_task": "cost_usd",
        "max_tool_calls_per_task": "tool_calls",
        "max_subtasks_per_task": "subtasks",
        "max_child_workflows_per_task": "child_workflows",
        "max_wall_time_per_task": "wall_time_s",
    }
    assert set(PER_TASK_LIMITS) <= set(Quotas.model_fields)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (45, 45),
        ("{limit: 2h, on_breach: alert}", 7200),
        ("{limit: 90}", 90),
    ],
)
def test_wall_time_accepts_durations(given: object, seconds: float) -> None:
    policy = Policy.from_yaml(f"defaults: {{quotas: {{max_wall_time_per_task: {given}}}}}")
    spec = policy.defaults.quotas.per_task()["wall_time_s"]
    assert spec.limit == pytest.approx(seconds)


def test_duration_strings_are_only_for_wall_time() -> None:
    with pytest.raises(PolicyError, match="max_tokens_per_task: got '5m'; expected a number"):
        Policy.from_yaml("defaults: {quotas: {max_tokens_per_task: 5m}}")


def test_python_code_can_build_a_policy_by_field_name() -> None:
    policy = Policy(
        global_=GlobalLimits(max_concurrent_tasks=3),
        agents={"a": AgentPolicy(workflow_types=["A"])},
    )
    assert policy.global_.max_concurrent_tasks == 3
    assert policy.agent_for("A") == ("a", policy.agents["a"])
    assert Policy.from_dict({"global": {"max_concurrent_tasks": 3}}).global_ == policy.global_


def test_models_are_frozen_and_strict_about_keys(lookups: Policy) -> None:
    with pytest.raises(ValidationError):
        lookups.defaults = lookups.defaults  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Estimate(tokens=1, tokenz=2)  # type: ignore[call-arg]


def test_a_str_without_newline_naming_a_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.txt"
    path.write_text("agents: {a: {}}\n")
    policy = Policy.from_yaml(str(path))
    assert policy.source == str(path)
    assert list(policy.agents) == ["a"]


def test_empty_document_is_an_empty_policy(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert Policy.from_yaml(path) == Policy(source=str(path))
    assert Policy.from_yaml("").agents == {}


def test_every_problem_is_reported_in_document_order() -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_yaml(
            """
agents:
  b: { quotas: { max_tokens_per_task: -1 } }
  a: { child_allowance: 2 }
global: { max_concurrent_tasks: 0 }
"""
        )
    assert [issue.path for issue in caught.value.issues] == [
        "agents.b.quotas.max_tokens_per_task",
        "agents.a.child_allowance",
        "global.max_concurrent_tasks",
    ]
    assert "(3 problems)" in str(caught.value)


# -- bad policies --------------------------------------------------------------------------

BAD_POLICIES = [
    pytest.param(
        "agnets:\n  planner: {}\n",
        ["agnets", "got 'agnets'", "one of the known fields: global, defaults", "'agents'"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_token_per_task: 5\n",
        [
            "agents.planner.quotas.max_token_per_task",
            "got 'max_token_per_task'",
            "one of the known fields: max_tokens_per_task,",
        ],
        id="unknown-quota-key",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_tokens_per_task: -5\n",
        ["agents.planner.quotas.max_tokens_per_task", "got -5", "a number >= 0"],
        id="negative-limit",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_tokens_per_task: {limit: -1}\n",
        ["agents.planner.quotas.max_tokens_per_task.limit", "got -1", "a number >= 0"],
        id="negative-limit-in-mapping",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_tool_calls_per_task: lots\n",
        ["agents.planner.quotas.max_tool_calls_per_task", "got 'lots'", "a number >= 0"],
        id="string-for-number",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_tokens_per_task: true\n",
        ["agents.planner.quotas.max_tokens_per_task", "got True", "a number >= 0"],
        id="boolean-for-number",
    ),
    pytest.param(
        "global:\n  max_concurrent_tasks: yes\n",
        ["global.max_concurrent_tasks", "got True", "an integer >= 1"],
        id="boolean-for-integer",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n"
        "      max_tokens_per_task: {limit: 5, on_breach: explode}\n",
        [
            "agents.planner.quotas.max_tokens_per_task.on_breach",
            "got 'explode'",
            "one of 'terminate', 'alert'",
        ],
        id="bad-on-breach",
    ),
    pytest.param(
        "defaults:\n  warn_at: 1.5\n",
        ["defaults.warn_at", "got 1.5", "a fraction in (0, 1]"],
        id="warn-at-above-one",
    ),
    pytest.param(
        "agents:\n  planner:\n    child_allowance: 0\n",
        ["agents.planner.child_allowance", "got 0", "a fraction in (0, 1]"],
        id="zero-child-allowance",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_tokens_per_task: 5\n"
        "      max_tokens_per_task: 6\n",
        [
            "agents.planner.quotas.max_tokens_per_task",
            "got 'max_tokens_per_task'",
            "each key at most once",
            "line 4",
            "line 5",
        ],
        id="duplicate-key",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas: {max_tokens_per_task: 5\n  executor: {}\n",
        ["line 4", "column", "valid YAML", "executor"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        "agents:\n  planner: {workflow_types: [Planner]}\n  Planner: {}\n",
        [
            "agents.Planner",
            "got 'Planner'",
            "already claimed by agents.planner.workflow_types[0]",
        ],
        id="workflow-type-claimed-twice",
    ),
    pytest.param(
        "tools:\n  a: {activity_types: [x]}\n  b: {activity_types: [y, x]}\n",
        ["tools.b.activity_types[1]", "got 'x'", "already claimed by tools.a.activity_types[0]"],
        id="activity-type-claimed-twice",
    ),
    pytest.param(
        "- agents\n- tools\n",
        ["got ['agents', 'tools']", "a mapping at the top level"],
        id="top-level-list",
    ),
    pytest.param(
        "tools:\n  search:\n    estimate: {tokens: -100}\n",
        ["tools.search.estimate.tokens", "got -100", "an integer >= 0"],
        id="negative-estimate",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_wall_time_per_task: 5 parsecs\n",
        ["agents.planner.quotas.max_wall_time_per_task", "got '5 parsecs'", "a duration such as"],
        id="bad-duration",
    ),
    pytest.param(
        "agents:\n  planner:\n    quotas:\n      max_wall_time_per_task: {limit: 5 parsecs}\n",
        [
            "agents.planner.quotas.max_wall_time_per_task.limit",
            "got '5 parsecs'",
            "a duration such as",
        ],
        id="bad-duration-in-mapping",
    ),
    pytest.param(
        "tools:\n  vector-search:\n    priority_class: urgent\n",
        [
            "tools.vector-search.priority_class",
            "got 'urgent'",
            "one of 'critical', 'high', 'normal', 'low', 'background'",
        ],
        id="unknown-priority-class",
    ),
    pytest.param(
        "agents:\n  planner:\n    priority: {default_class: asap}\n",
        ["agents.planner.priority.default_class", "got 'asap'", "one of 'critical'"],
        id="unknown-default-class",
    ),
    pytest.param(
        "agents:\n  planner:\n    throttle: {rate_per_sec: 0, burst: 10}\n",
        ["agents.planner.throttle.rate_per_sec", "got 0", "a number > 0"],
        id="zero-rate",
    ),
    pytest.param(
        "agents:\n  planner:\n    throttle: {rate_per_sec: 5}\n",
        ["agents.planner.throttle.burst", "required"],
        id="missing-burst",
    ),
    pytest.param(
        "agents:\n  planner:\n    version: 2.1\n",
        ["agents.planner.version", "got 2.1", "a string"],
        id="unquoted-version",
    ),
    pytest.param(
        "models:\n  gpt-x: {input_per_1k: cheap, output_per_1k: 1}\n",
        ["models.gpt-x.input_per_1k", "got 'cheap'", "a number >= 0"],
        id="bad-price",
    ),
    pytest.param(
        "tools:\n  call_llm: {counts_as_tool_call: 0}\n",
        ["tools.call_llm.counts_as_tool_call", "got 0", "true or false"],
        id="integer-for-boolean",
    ),
]


@pytest.mark.parametrize(("text", "needles"), BAD_POLICIES)
def test_bad_policy_is_reported_with_file_path_value_and_expectation(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = tmp_path / "governance.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        Policy.from_yaml(path)
    message = str(caught.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert caught.value.issues
    assert all(issue.source == str(path) for issue in caught.value.issues)


def test_missing_policy_file_is_named() -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_yaml("nope.yaml")
    assert "nope.yaml" in str(caught.value)
    assert "an existing policy file" in str(caught.value)


def test_missing_path_object_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    with pytest.raises(PolicyError, match="an existing policy file"):
        Policy.from_yaml(missing)


def test_policy_error_is_a_value_error_with_structured_issues() -> None:
    with pytest.raises(ValueError) as caught:
        Policy.from_yaml("defaults: {on_breach: explode}")
    error = caught.value
    assert isinstance(error, PolicyError)
    (issue,) = error.issues
    assert (issue.source, issue.path, issue.value) == ("<text>", "defaults.on_breach", "explode")
    assert issue.expected == "one of 'terminate', 'alert'"


def test_union_branches_give_one_issue_per_field() -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_yaml("defaults: {quotas: {max_tokens_per_task: [1, 2]}}")
    assert len(caught.value.issues) == 1
    assert caught.value.issues[0].path == "defaults.quotas.max_tokens_per_task"


def test_from_dict_rejects_python_side_names() -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"global_": {}, "source": "x"}, source="inline")
    assert [issue.path for issue in caught.value.issues] == ["global_", "source"]
    assert "did you mean 'global'?" in str(caught.value)


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(PolicyError, match="a mapping at the top level"):
        Policy.from_dict([1, 2], source="inline")  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", ["0", '"1000000000d"', "-5"])
def test_reservation_ttl_must_be_a_positive_duration_of_at_most_30_days(ttl: str) -> None:
    with pytest.raises(PolicyError) as error:
        Policy.from_yaml(f"shared: {{ reservation_ttl: {ttl} }}")
    assert "shared.reservation_ttl" in str(error.value) and "30 days" in str(error.value)


@pytest.mark.parametrize("timeout", ["0", '"1000000000d"', "-5"])
def test_call_timeout_must_be_a_positive_duration_of_at_most_30_days(timeout: str) -> None:
    with pytest.raises(PolicyError) as error:
        Policy.from_yaml(f"shared: {{ call_timeout: {timeout} }}")
    assert "shared.call_timeout" in str(error.value) and "30 days" in str(error.value)


def test_the_ledger_task_queue_must_be_a_string() -> None:
    with pytest.raises(PolicyError) as error:
        Policy.from_yaml("shared: { task_queue: [a, b] }")
    assert "shared.task_queue" in str(error.value)
    with pytest.raises(PolicyError, match=r"shared\.call_timeout: got 'nan'"):
        Policy.from_yaml("shared: { call_timeout: nan }")
    assert Policy.from_yaml("shared: { call_timeout: 90s }").shared.call_timeout == 90.0
