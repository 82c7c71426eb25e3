"""The public face: a small root, submodules grouped by job, and the old root names kept
for one release as deprecated aliases. The docs and examples import public names only."""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

import temporal_governor

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "temporal_governor"

PUBLIC_MODULES = [
    "temporal_governor",
    "temporal_governor.activity",
    "temporal_governor.workflow",
    "temporal_governor.control",
    "temporal_governor.review",
    "temporal_governor.ledger",
    "temporal_governor.telemetry",
    "temporal_governor.errors",
    "temporal_governor.interceptors",
    "temporal_governor.names",
    "temporal_governor.policy",
    "temporal_governor.verify",
    "temporal_governor.integrations",
]
"""The modules the docs send users to; each has a docstring and an ``__all__``."""

OLD_ROOT = [
    "BACKPRESSURE_SIGNAL",
    "BUDGET_EXCEEDED",
    "BUDGET_QUERY",
    "CONTROL_QUERY",
    "GOVERNANCE_KILLED",
    "INVALID_USAGE",
    "KILL_SIGNAL",
    "OVERRIDE_SIGNAL",
    "PRIORITY_KEYS",
    "RESUME_SIGNAL",
    "RUNAWAY_LOOP",
    "TOOL_DISABLED",
    "ActiveBackpressure",
    "Amounts",
    "Attribution",
    "BackpressureMessage",
    "BreachDetails",
    "BudgetContext",
    "BudgetExceeded",
    "BudgetSnapshot",
    "ChainLink",
    "ControlStatus",
    "Decision",
    "DecisionRecord",
    "DecisionSink",
    "GovernanceEvent",
    "GovernanceInterceptor",
    "GovernanceKilled",
    "GovernorError",
    "GovernorPlugin",
    "IncidentReport",
    "InvalidUsage",
    "Keyring",
    "KeyringError",
    "KillMessage",
    "LimitState",
    "OpenTelemetrySink",
    "OverrideMessage",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "ResumeMessage",
    "RunawayLoop",
    "Usage",
    "attribution",
    "current_attribution",
    "current_backpressure",
    "current_decision",
    "emit_backpressure",
    "estimate",
    "register_search_attributes",
    "report_usage",
]
"""Everything the root exported before the public face was made small (commit 8570e14)."""

RENAMED = {
    "Decision": "Degradation",
    "current_decision": "current_degradation",
    "current_attribution": "current_context",
    "GovernanceEvent": "BudgetEvent",
}
"""Old root names that also got a new name (issue #12, one name per concept)."""

RENAMED_IN_MODULES = {
    "temporal_governor.activity": {
        "Decision": "Degradation",
        "current_decision": "current_degradation",
        "current_attribution": "current_context",
    },
    "temporal_governor.workflow": {"current_attribution": "current_context"},
}
"""Names the new modules had before issue #12's renames, kept as deprecated aliases."""

DEPRECATED_MODULES = ("workflows", "activities", "control_client", "replay")
"""Modules kept as deprecated aliases of ``ledger``, ``control`` and ``review``."""


@cache
def documented_constants() -> frozenset[str]:
    """Module-level names in the package's source that are followed by a docstring."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for statement, following in itertools.pairwise(body):
            if isinstance(statement, ast.Assign):
                targets = statement.targets
            elif isinstance(statement, ast.AnnAssign):
                targets = [statement.target]
            else:
                continue
            documents = (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip()
            )
            if documents:
                found.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(found)


def has_docstring(module: ModuleType, name: str) -> bool:
    """A class or function with its own docstring, or a constant documented where defined."""
    value = getattr(module, name)
    if inspect.isclass(value):
        return bool((vars(value).get("__doc__") or "").strip())
    if inspect.isroutine(value):
        return bool((value.__doc__ or "").strip())
    return name in documented_constants()


def test_the_root_exports_about_a_dozen_names() -> None:
    exported = temporal_governor.__all__
    assert 8 <= len(exported) <= 15, exported
    assert len(set(exported)) == len(exported)
    # what an application registers and catches
    for name in ("GovernorPlugin", "Policy", "attribution", "BudgetExceeded", "GovernorError"):
        assert name in exported


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_resolves_and_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no docstring"
    names = module.__all__
    assert names, f"{module_name} exports nothing"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of them is a deprecated alias
        missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it lacks: {missing}"
    undocumented = [name for name in names if not has_docstring(module, name)]
    assert not undocumented, f"{module_name}: no docstring on {undocumented}"
    assert not [name for name in names if name.startswith("_")]


def test_the_workflow_module_shares_the_governors_state_inside_the_sandbox() -> None:
    # workflow code imports temporal_governor.workflow in the sandbox: it must be passed
    # through (so estimate() and current_context() see what the interceptors set)
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    from temporal_governor.plugin import _share_governor_with_sandbox

    runner = _share_governor_with_sandbox(None)
    assert isinstance(runner, SandboxedWorkflowRunner)
    passthrough = runner.restrictions.passthrough_modules
    assert "temporal_governor" in passthrough  # the package and so all its submodules


@pytest.mark.parametrize("name", sorted(set(OLD_ROOT) - set(temporal_governor.__all__)))
def test_an_old_root_name_still_resolves_with_a_warning_naming_its_new_home(name: str) -> None:
    with pytest.warns(DeprecationWarning) as caught:
        value = getattr(temporal_governor, name)
    [warning] = [w for w in caught if "from temporal_governor" in str(w.message)]
    assert warning.filename == __file__  # it blames the import, not the package
    new = RENAMED.get(name, name)
    found = re.search(rf"`from (temporal_governor(?:\.\w+)+) import {new}`", str(warning.message))
    assert found, str(warning.message)
    home = importlib.import_module(found.group(1))
    assert getattr(home, new) is value
    if hasattr(home, "__all__"):
        assert new in home.__all__
    assert has_docstring(home, new)
    # the `from` form warns the same way
    with pytest.warns(DeprecationWarning, match=name):
        exec(f"from temporal_governor import {name}", {})


@pytest.mark.parametrize(
    ("module_name", "old", "new"),
    [(m, old, new) for m, names in RENAMED_IN_MODULES.items() for old, new in names.items()],
)
def test_a_renamed_name_still_resolves_with_a_warning_naming_the_new_one(
    module_name: str, old: str, new: str
) -> None:
    module = importlib.import_module(module_name)
    with pytest.warns(DeprecationWarning, match=rf"`from {module_name} import {new}`") as caught:
        value = getattr(module, old)
    assert caught[0].filename == __file__  # it blames the caller
    assert value is getattr(module, new)
    assert old not in module.__all__ and new in module.__all__
    with pytest.warns(DeprecationWarning, match=old):
        exec(f"from {module_name} import {old}", {})


def test_renamed_classes_keep_their_old_name_as_the_same_class() -> None:
    from temporal_governor.core import accounting, degradation

    assert degradation.Decision is degradation.Degradation
    assert accounting.GovernanceEvent is accounting.BudgetEvent


def test_the_old_root_names_stay_out_of_sight() -> None:
    shown = set(dir(temporal_governor))
    assert not (set(OLD_ROOT) - set(temporal_governor.__all__)) & shown
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = temporal_governor.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from temporal_governor import no_such_name", {})


# -- the docs and examples ----------------------------------------------------------------


def user_facing_files() -> list[Path]:
    return sorted(
        [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    )


FROM_IMPORT = re.compile(
    r"from\s+(temporal_governor(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]+)", flags=re.S
)
DOTTED = re.compile(r"\btemporal_governor(?:\.\w+)+")
PRIVATE = re.compile(r"\btemporal_governor(?:\.\w+)*\._[a-z]\w*")


def problems_in(code: str) -> list[str]:
    """Every private module, deprecated name or dead path the code refers to."""
    problems = [f"private: {hit}" for hit in PRIVATE.findall(code)]
    old_names = set(OLD_ROOT) - set(temporal_governor.__all__)
    for module_name, names in FROM_IMPORT.findall(code):
        for entry in re.split(r"[,()]", re.sub(r"#[^\n]*", "", names)):
            words = entry.split()  # `name` or `name as alias`
            if not words or not words[0].isidentifier():
                continue
            name = words[0]
            if module_name == "temporal_governor" and name in old_names:
                problems.append(f"deprecated: from temporal_governor import {name}")
            else:
                problems += problems_in_path(f"{module_name}.{name}")
    for dotted in DOTTED.findall(code):
        problems += problems_in_path(dotted)
    return problems


def problems_in_path(dotted: str) -> list[str]:
    """What is wrong with a dotted path: deprecated, or nothing there (a dead reference)."""
    parts = dotted.split(".")
    if len(parts) > 1 and parts[1] in DEPRECATED_MODULES:
        return [f"deprecated module: {dotted}"]
    if len(parts) == 2 and parts[1] in set(OLD_ROOT) - set(temporal_governor.__all__):
        return [f"deprecated: {dotted}"]
    value: object = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(value, part):
            value = getattr(value, part)
            continue
        try:
            value = importlib.import_module(".".join(parts[:depth]))
        except ImportError:
            return [f"nothing at {dotted}"]
    return []


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: p.name)
def test_docs_and_examples_use_public_names_only(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        problems = problems_in(path.read_text())  # prose and code alike
    assert not problems, f"{path.relative_to(ROOT)}: {sorted(set(problems))}"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from temporal_governor import report_usage", "deprecated: from temporal_governor"),
        ("from temporal_governor import (\n    Policy,\n    BUDGET_QUERY,\n)", "deprecated"),
        ("x = temporal_governor.estimate(tokens=1)", "deprecated: temporal_governor.estimate"),
        ("from temporal_governor.review._render import render_html", "private"),
        ("import temporal_governor.control._messages as m", "private"),
        ("from temporal_governor.replay import review", "deprecated module"),
        ("temporal_governor.accounting.RunLedger", "nothing at"),
        ("from temporal_governor.control import NoSuchName", "nothing at"),
    ],
)
def test_the_docs_check_finds_what_it_looks_for(code: str, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert any(expected in problem for problem in problems_in(code)), problems_in(code)


def test_the_docs_check_passes_public_names() -> None:
    code = (
        "from temporal_governor import GovernorPlugin, Policy as P, attribution\n"
        "from temporal_governor.activity import report_usage\n"
        "temporal_governor.review.render_terminal(report)\n"
    )
    assert problems_in(code) == []


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_docs_link_to_files_that_exist(path: Path) -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    dead = [t for t in targets if "://" not in t and not (path.parent / t).exists()]
    assert not dead, f"{path.relative_to(ROOT)} links to nothing: {dead}"
