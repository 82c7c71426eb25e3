"""temporal-governor verify: policy checks with Z3 (pure: no Temporal server).

Every seeded defect must yield exactly its finding (kind, field path, severity), and each
witness is checked against what it claims, from the policy's own numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from temporal_governor import cli as cli_module
from temporal_governor.policy import Policy
from temporal_governor.verify import (
    Finding,
    FindingKind,
    Severity,
    VerifierUnavailable,
    _solver,
    verify_policy,
)

pytest.importorskip("z3")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHIPPED = sorted(EXAMPLES.glob("*.yaml"))


def findings_of(document: dict[str, Any]) -> list[Finding]:
    return verify_policy(Policy.from_dict(document)).findings


def only(findings: list[Finding], kind: FindingKind) -> Finding:
    matching = [f for f in findings if f.kind == kind]
    assert len(matching) == 1, findings
    return matching[0]


# -- the shipped policies ---------------------------------------------------------------------


def test_there_are_shipped_policies() -> None:
    names = {path.name for path in SHIPPED}
    assert {"governance.yaml", "resource-governance.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_have_only_fleet_exposure_notes(path: Path) -> None:
    """No error or warning; each windowed shared budget a fleet can pass is noted (info)."""
    policy = Policy.from_yaml(path)
    report = verify_policy(policy)
    assert report.failing(Severity.WARNING) == []
    assert {f.kind for f in report.findings} <= {FindingKind.FLEET_EXPOSURE}
    concurrency = policy.global_.max_concurrent_tasks
    assert concurrency is not None
    expected = set()
    windowed = {
        "global.max_tokens_per_minute": ("tokens", policy.global_.max_tokens_per_minute, None),
        "global.max_tool_calls_per_minute": (
            "tool_calls",
            policy.global_.max_tool_calls_per_minute,
            None,
        ),
    }
    for name, agent in policy.agents.items():
        for field, resource in (
            ("max_tokens_per_minute", "tokens"),
            ("max_tool_calls_per_minute", "tool_calls"),
        ):
            spec = getattr(agent.quotas, field)
            if spec is not None:
                windowed[f"agents.{name}.quotas.{field}"] = (resource, spec.limit, name)
    for path_, (resource, limit, owner) in windowed.items():
        ceilings = [
            spec.ceiling
            for name, agent in policy.agents.items()
            if owner in (None, name)
            for r, spec in agent.quotas.per_task().items()
            if r == resource
        ]
        if limit is not None and ceilings and concurrency * max(ceilings) > limit:
            expected.add(path_)
            finding = next(f for f in report.findings if f.path == path_)
            runs, ceiling = finding.witness["runs"], finding.witness["per_task_ceiling"]
            assert ceiling == max(ceilings)
            assert runs * ceiling > limit >= (runs - 1) * ceiling
            assert finding.severity == Severity.INFO
    assert {f.path for f in report.findings} == expected
    assert expected, "the shipped policies do cap a fleet's spend per minute"


# -- dead rules ---------------------------------------------------------------------------------


def test_per_task_quota_above_the_tenant_total_is_dead() -> None:
    findings = findings_of(
        {
            "agents": {"writer": {"quotas": {"max_tokens_per_task": 5000}}},
            "tenants": {"acme": {"quotas": {"max_tokens": 1000}}},
        }
    )
    finding = only(findings, FindingKind.DEAD_RULE)
    assert finding.path == "agents.writer.quotas.max_tokens_per_task"
    assert finding.severity == Severity.WARNING
    assert finding.related == ["tenants.acme.quotas.max_tokens"]
    witness = finding.witness
    assert witness["tenant_entry"] == "acme"
    assert witness["reachable_max"] == 1000
    assert 1000 < witness["spend"] <= 5000  # passes the task quota, refused by the tenant
    assert len(findings) == 1


def test_per_minute_window_above_the_per_hour_one_is_dead() -> None:
    findings = findings_of(
        {
            "tenants": {
                "acme": {"quotas": {"max_tokens_per_minute": 9000, "max_tokens_per_hour": 4000}}
            }
        }
    )
    finding = only(findings, FindingKind.DEAD_RULE)
    assert finding.path == "tenants.acme.quotas.max_tokens_per_minute"
    assert finding.witness["reachable_max"] == 4000
    assert 4000 < finding.witness["spend"] <= 9000


def test_hour_window_above_sixty_minutes_is_dead() -> None:
    findings = findings_of(
        {
            "tenants": {
                "t": {"per_owner": {"max_cost_usd_per_minute": 0.5, "max_cost_usd_per_hour": 45}}
            }
        }
    )
    finding = only(findings, FindingKind.DEAD_RULE)
    assert finding.path == "tenants.t.per_owner.max_cost_usd_per_hour"
    assert finding.witness["windows"] == 60
    assert finding.witness["reachable_max"] == pytest.approx(60 * 0.5)
    assert 30 < finding.witness["spend"] <= 45


def test_agent_window_above_the_global_one_is_dead_but_an_alert_one_hides_nothing() -> None:
    findings = findings_of(
        {
            "global": {"max_tokens_per_minute": 1000},
            "agents": {"a": {"quotas": {"max_tokens_per_minute": 3000}}},
        }
    )
    assert only(findings, FindingKind.DEAD_RULE).path == "agents.a.quotas.max_tokens_per_minute"
    alert_only = findings_of(
        {
            "tenants": {"acme": {"quotas": {"max_tokens": {"limit": 10, "on_breach": "alert"}}}},
            "agents": {"a": {"quotas": {"max_tokens_per_task": 5000}}},
        }
    )
    assert not [f for f in alert_only if f.kind == FindingKind.DEAD_RULE]


def test_equal_or_looser_outer_limits_are_not_dead() -> None:
    findings = findings_of(
        {
            "agents": {"a": {"quotas": {"max_tokens_per_task": 1000}}},
            "tenants": {
                "acme": {"quotas": {"max_tokens": 1000}},
                "beta": {"quotas": {"max_tokens": 5000}},
            },
        }
    )
    assert findings == []  # equal ceilings bind together: neither is dead


def test_a_window_above_the_total_is_dead() -> None:
    finding = only(
        findings_of(
            {"tenants": {"acme": {"quotas": {"max_tokens": 1000, "max_tokens_per_day": 99_000}}}}
        ),
        FindingKind.DEAD_RULE,
    )
    assert finding.path == "tenants.acme.quotas.max_tokens_per_day"
    assert 1000 < finding.witness["spend"] <= 99_000


def test_a_limit_an_override_of_the_tighter_one_lets_bind_is_not_dead() -> None:
    """M5: an override may lift the tenant total to its hard ceiling; then the quota binds."""
    document: dict[str, Any] = {
        "agents": {"a": {"quotas": {"max_tokens_per_task": 1000}}},
        "tenants": {"acme": {"quotas": {"max_tokens": {"limit": 500, "hard_ceiling": 5000}}}},
    }
    assert findings_of(document) == []
    # with overrides only up to 800 the quota of 1,000 still never binds
    document["tenants"]["acme"]["quotas"]["max_tokens"]["hard_ceiling"] = 800
    finding = only(findings_of(document), FindingKind.DEAD_RULE)
    assert finding.path == "agents.a.quotas.max_tokens_per_task"
    assert finding.witness["reachable_max"] == 800 == finding.witness["tighter_cap"]
    assert finding.witness["tighter_limit"] == 500
    assert finding.witness["tighter_hard_ceiling"] == 800
    assert 800 < finding.witness["spend"] <= 1000
    assert "500 tokens in total, overrides up to 800" in finding.message


def test_messages_say_one_unit_in_the_singular() -> None:
    """L6: "1 token per minute", "1 run at its per-task ceiling", not "1 tokens", "1 runs"."""
    findings = findings_of(
        {
            "agents": {"a": {"quotas": {"max_tokens_per_task": 1000}}},
            "tenants": {"acme": {"quotas": {"max_tokens_per_minute": 5000}}},
            "global": {"max_tokens_per_minute": 1},
        }
    )
    dead = next(f for f in findings if f.kind == FindingKind.DEAD_RULE)
    assert "(1 token per minute)" in dead.message and "at most 1 token per minute" in dead.message
    exposure = next(f for f in findings if f.path == "global.max_tokens_per_minute")
    assert exposure.message.startswith("1 run at its per-task ceiling (")
    assert "spends 1,000 tokens" in exposure.message
    text = " ".join(f.message for f in findings)
    assert " 1 tokens" not in text and " 1 runs" not in text


# -- unreachable agents -----------------------------------------------------------------------


def test_child_whose_estimate_no_parent_can_carve() -> None:
    findings = findings_of(
        {
            "defaults": {"quotas": {"max_tokens_per_task": 5000}},
            "agents": {
                "planner": {"quotas": {"max_tokens_per_task": 8000}},
                "executor": {"estimate": {"tokens": 8000}},
            },
        }
    )
    finding = only(findings, FindingKind.UNREACHABLE_AGENT)
    assert finding.path == "agents.executor.estimate.tokens"
    assert finding.severity == Severity.ERROR
    witness = finding.witness
    assert witness["parent"] == "planner"
    assert witness["best_left"] == witness["parent_ceiling"] - witness["needs"] == 0
    assert set(finding.related) == {
        "agents.planner.quotas.max_tokens_per_task",
        "defaults.quotas.max_tokens_per_task",
    }


def test_child_only_an_unlisted_workflow_can_start_is_a_warning() -> None:
    findings = findings_of(
        {
            "agents": {
                "planner": {"quotas": {"max_cost_usd_per_task": 1.0}},
                "executor": {
                    "estimate": {"cost_usd": 2.5},
                    "quotas": {"max_cost_usd_per_task": 2.0},
                },
            },
        }
    )
    finding = only(findings, FindingKind.UNREACHABLE_AGENT)
    assert finding.severity == Severity.WARNING
    assert finding.path == "agents.executor.estimate.cost_usd"
    assert finding.witness["parent"] == "executor"  # the parent with the most left
    assert finding.witness["best_left"] == pytest.approx(2.0 - 2.5)


def test_override_headroom_makes_a_child_reachable() -> None:
    findings = findings_of(
        {
            "defaults": {"quotas": {"max_tokens_per_task": {"limit": 5000, "hard_ceiling": 9000}}},
            "agents": {"executor": {"estimate": {"tokens": 8000}}},
        }
    )
    assert not [f for f in findings if f.kind == FindingKind.UNREACHABLE_AGENT]


# -- loosening risk tiers and degrade rules -------------------------------------------------


def test_risk_tier_looser_than_its_agent() -> None:
    findings = findings_of(
        {
            "risk_tiers": {"payment": {"max_cost_usd_per_task": 10, "loop_action": "alert"}},
            "agents": {
                "buyer": {
                    "risk_tier": "payment",
                    "quotas": {"max_cost_usd_per_task": 2},
                    "loop_detection": {"signature_window": 8, "action": "terminate"},
                }
            },
        }
    )
    by_path = {f.path: f for f in findings}
    assert set(by_path) == {
        "risk_tiers.payment.max_cost_usd_per_task",
        "risk_tiers.payment.loop_action",
    }
    cost = by_path["risk_tiers.payment.max_cost_usd_per_task"]
    assert (cost.kind, cost.severity) == (FindingKind.LOOSENING_RULE, Severity.WARNING)
    assert cost.witness["reachable_max"] == 2 < cost.witness["limit"] == 10
    action = by_path["risk_tiers.payment.loop_action"]
    assert (action.kind, action.severity) == (FindingKind.LOOSENING_RULE, Severity.ERROR)
    assert action.witness == {"agent": "buyer", "agent_action": "terminate", "tier_action": "alert"}


def test_tool_tier_applies_everywhere_so_an_unlimited_run_keeps_it_alive() -> None:
    findings = findings_of(
        {
            "risk_tiers": {"payment": {"max_calls_per_task": 50}},
            "tools": {"charge": {"risk_tier": "payment"}},
            "agents": {"buyer": {"quotas": {"max_tool_calls_per_task": 10}}},
        }
    )
    assert findings == []  # workflows without an agent entry have no tool-call limit


def test_degrade_rule_shadowed_by_an_earlier_one() -> None:
    findings = findings_of(
        {
            "agents": {
                "a": {
                    "quotas": {"max_tokens_per_task": 1000},
                    "degrade": [
                        {"when_remaining_below": 0.5, "max_tokens": 512},
                        {"when_remaining_below": 0.2, "max_tokens": 128},
                    ],
                }
            }
        }
    )
    finding = only(findings, FindingKind.DEAD_RULE)
    assert finding.path == "agents.a.degrade[1]"
    assert finding.witness["taken"] == 0
    assert finding.witness["remaining"] < 0.2  # rule 1 applies there, and rule 0 does too


def test_degrade_rule_that_loosens_as_the_budget_runs_out() -> None:
    rules = [
        {"when_remaining_below": 0.1, "max_tokens": 2048},
        {"when_remaining_below": 0.5, "max_tokens": 256, "disable_tools": ["search"]},
    ]
    findings = findings_of({"agents": {"a": {"degrade": rules}}})
    finding = only(findings, FindingKind.LOOSENING_RULE)
    assert finding.path == "agents.a.degrade[0]"
    assert finding.severity == Severity.WARNING
    witness = finding.witness
    assert witness["remaining"] < 0.1 <= witness["remaining_earlier"] < 0.5
    assert "search enabled again" in finding.message


def test_degrade_to_a_dearer_model() -> None:
    document = {
        "models": {
            "small": {"input_per_1k": 0.001, "output_per_1k": 0.002},
            "big": {"input_per_1k": 0.0005, "output_per_1k": 0.03},
        },
        "agents": {"a": {"degrade": [{"when_anomalous": True, "model_map": {"small": "big"}}]}},
    }
    finding = only(findings_of(document), FindingKind.LOOSENING_RULE)
    assert finding.path == "agents.a.degrade[0].model_map.small"
    assert finding.severity == Severity.ERROR
    policy = Policy.from_dict(document)
    tokens_in, tokens_out = finding.witness["input_tokens"], finding.witness["output_tokens"]
    assert isinstance(tokens_in, int) and isinstance(tokens_out, int)
    before = policy.cost_usd("small", tokens_in, tokens_out)
    after = policy.cost_usd("big", tokens_in, tokens_out)
    assert before is not None and after is not None and after > before
    cheaper = dict(
        document,
        models={**document["models"], "big": {"input_per_1k": 0.001, "output_per_1k": 0.001}},
    )
    assert findings_of(cheaper) == []


# -- overrides ------------------------------------------------------------------------------------


def test_hard_ceiling_above_the_tenant_total_is_unreachable() -> None:
    findings = findings_of(
        {
            "agents": {
                "a": {"quotas": {"max_tokens_per_task": {"limit": 1000, "hard_ceiling": 5000}}}
            },
            "tenants": {"default": {"quotas": {"max_tokens": 2000}}},
        }
    )
    finding = only(findings, FindingKind.UNREACHABLE_OVERRIDE)
    assert finding.path == "agents.a.quotas.max_tokens_per_task.hard_ceiling"
    assert finding.severity == Severity.WARNING
    assert finding.witness["reachable_max"] == 2000 < finding.witness["hard_ceiling"] == 5000
    assert 2000 < finding.witness["spend"] <= 5000
    assert finding.witness["tenant_entry"] == "default"


# -- unbounded spend -----------------------------------------------------------------------------


def test_alert_only_limits_leave_spend_unbounded() -> None:
    findings = findings_of(
        {
            "defaults": {"on_breach": "alert"},
            "agents": {
                "a": {
                    "quotas": {
                        "max_tokens_per_task": 1000,
                        "max_tool_calls_per_task": {"limit": 5, "on_breach": "terminate"},
                    }
                }
            },
        }
    )
    finding = only(findings, FindingKind.UNBOUNDED_SPEND)
    assert finding.path == "agents.a.quotas.max_tokens_per_task"
    assert finding.severity == Severity.ERROR
    assert finding.witness["spend"] >= 1000 * finding.witness["limit"]


def test_a_terminate_limit_behind_an_alert_bounds_spend() -> None:
    findings = findings_of(
        {
            "agents": {
                "a": {"quotas": {"max_tokens_per_task": {"limit": 1000, "on_breach": "alert"}}}
            },
            "tenants": {"default": {"quotas": {"max_tokens": 1_000_000}}},
        }
    )
    assert not [f for f in findings if f.kind == FindingKind.UNBOUNDED_SPEND]


@pytest.mark.parametrize(
    "window",
    [
        {"tenants": {"default": {"quotas": {"max_tokens_per_minute": 5000}}}},
        {"global": {"max_tokens_per_minute": 1_000_000}},
    ],
    ids=["tenant", "global"],
)
def test_a_window_behind_an_alert_total_caps_nothing(window: dict[str, Any]) -> None:
    """M2: a per-minute limit rolls over, so it does not cap a per-task total."""
    alert = {"max_tokens_per_task": {"limit": 1000, "on_breach": "alert"}}
    finding = only(
        findings_of({"defaults": {"quotas": alert}, **window}), FindingKind.UNBOUNDED_SPEND
    )
    assert finding.path == "defaults.quotas.max_tokens_per_task"
    assert finding.witness["spend"] >= 1000 * 1000
    assert "a window that rolls over and caps no total" in finding.message


def test_an_alert_only_per_owner_limit_is_unbounded_for_runs_with_an_owner() -> None:
    """M3: per_owner limits count only runs with an owner; those runs are checked too."""
    finding = only(
        findings_of(
            {
                "tenants": {
                    "default": {"per_owner": {"max_tokens": {"limit": 100, "on_breach": "alert"}}}
                }
            }
        ),
        FindingKind.UNBOUNDED_SPEND,
    )
    assert finding.path == "tenants.default.per_owner.max_tokens"
    assert finding.witness["with_owner"] is True
    assert finding.witness["tenant_entry"] == "default"
    assert "with an owner" in finding.message
    backed = {
        "tenants": {
            "default": {
                "per_owner": {"max_tokens": {"limit": 100, "on_breach": "alert"}},
                "quotas": {"max_tokens": 10_000},
            }
        }
    }
    assert findings_of(backed) == []


def test_alert_only_child_workflow_limits_are_unbounded() -> None:
    """M4: subtasks and child workflows are spent like tokens: an alert alone caps none."""
    quotas = {
        "max_subtasks_per_task": {"limit": 5, "on_breach": "alert"},
        "max_child_workflows_per_task": {"limit": 10, "on_breach": "alert"},
    }
    findings = findings_of({"defaults": {"quotas": quotas}})
    assert sorted(f.path for f in findings if f.kind == FindingKind.UNBOUNDED_SPEND) == [
        "defaults.quotas.max_child_workflows_per_task",
        "defaults.quotas.max_subtasks_per_task",
    ]
    # a terminate cap on all descendants caps the direct children too, not the reverse
    quotas["max_child_workflows_per_task"] = {"limit": 10, "on_breach": "terminate"}
    assert findings_of({"defaults": {"quotas": quotas}}) == []
    quotas["max_child_workflows_per_task"] = {"limit": 10, "on_breach": "alert"}
    quotas["max_subtasks_per_task"] = {"limit": 5, "on_breach": "terminate"}
    finding = only(findings_of({"defaults": {"quotas": quotas}}), FindingKind.UNBOUNDED_SPEND)
    assert finding.path == "defaults.quotas.max_child_workflows_per_task"
    # a tenant's max_subtasks counts every child the run starts
    tenant = {"tenants": {"default": {"quotas": {"max_subtasks": 100}}}}
    assert findings_of({"defaults": {"quotas": quotas}, **tenant}) == []


# -- fleet exposure ------------------------------------------------------------------------------


def fleet(concurrency: int, on_unavailable: str = "closed") -> dict[str, Any]:
    return {
        "shared": {"on_unavailable": on_unavailable},
        "global": {"max_concurrent_tasks": concurrency},
        "tenants": {"acme": {"quotas": {"max_tokens_per_minute": 1000}}},
        "agents": {"a": {"quotas": {"max_tokens_per_task": 300}}},
    }


def test_fleet_exposure_names_the_fewest_runs_that_pass_the_window() -> None:
    finding = only(findings_of(fleet(10)), FindingKind.FLEET_EXPOSURE)
    assert finding.path == "tenants.acme.quotas.max_tokens_per_minute"
    assert finding.severity == Severity.INFO
    runs = finding.witness["runs"]
    assert runs == math.floor(1000 / 300) + 1
    assert runs * 300 > 1000 >= (runs - 1) * 300
    assert finding.witness["worst_case"] == 10 * 300


def test_fleet_exposure_within_the_window_is_no_finding_and_an_open_ledger_warns() -> None:
    assert findings_of(fleet(3)) == []
    assert (
        only(findings_of(fleet(10, "open")), FindingKind.FLEET_EXPOSURE).severity
        == Severity.WARNING
    )


def test_a_clean_policy_has_no_findings() -> None:
    report = verify_policy(
        Policy.from_dict({"agents": {"a": {"quotas": {"max_tokens_per_task": 10}}}})
    )
    assert report.findings == []
    assert report.solver_queries >= 0 and report.seconds >= 0


def test_missing_solver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_z3(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_solver.importlib, "import_module", no_z3)
    with pytest.raises(VerifierUnavailable, match=r"temporal-governor\[verify\]"):
        verify_policy(Policy.from_dict({}))


# -- the command line --------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(cli_module.main, ["verify", *args])


def write(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_cli_exit_codes_follow_fail_on(tmp_path: Path) -> None:
    shipped = str(EXAMPLES / "governance.yaml")
    assert run(shipped).exit_code == 0
    assert run(shipped, "--fail-on", "info").exit_code == 1
    dead = write(
        tmp_path,
        {"tenants": {"t": {"quotas": {"max_tokens_per_minute": 9, "max_tokens_per_hour": 4}}}},
    )
    assert run(dead).exit_code == 0  # a warning only
    result = run(dead, "--fail-on", "warning")
    assert result.exit_code == 1
    assert "1 warning" in result.output
    paths = [f["path"] for f in json.loads(run(dead, "--json").output)["findings"]]
    assert paths == ["tenants.t.quotas.max_tokens_per_minute"]


def test_cli_json_report(tmp_path: Path) -> None:
    policy = write(
        tmp_path, {"defaults": {"on_breach": "alert", "quotas": {"max_cost_usd_per_task": 1}}}
    )
    result = run(policy, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [(f["kind"], f["severity"], f["path"]) for f in report["findings"]] == [
        ("unbounded_spend", "error", "defaults.quotas.max_cost_usd_per_task")
    ]
    assert report["solver_queries"] > 0


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("agents: {a: {quotas: {max_tokens_per_task: -1}}}\n")
    result = run(str(broken))
    assert result.exit_code == 2
    assert "max_tokens_per_task" in result.output
    assert run(str(tmp_path / "missing.yaml")).exit_code == 2


def test_cli_without_the_solver_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_z3(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(_solver.importlib, "import_module", no_z3)
    result = run(str(EXAMPLES / "governance.yaml"))
    assert result.exit_code == 2
    assert "temporal-governor[verify]" in result.output
