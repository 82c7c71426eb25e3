"""Policy loading is bounded in time and memory, and every bad document is a PolicyError.

Plain unit tests, no Temporal needed. Tests that depend on how the YAML is parsed run with
both loaders: libyaml's (C, the default where PyYAML has it) and PyYAML's pure-Python one
(the fallback where it does not).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temporal_governor import policy as policy_module
from temporal_governor.errors import PolicyError
from temporal_governor.policy import (
    MAX_DURATION_S,
    MAX_NUMBER,
    MAX_POLICY_BYTES,
    MAX_POLICY_DEPTH,
    MAX_POLICY_VALUES,
    Policy,
)

LOADERS = ["libyaml", "python"]


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with libyaml's loader, then with PyYAML's pure-Python one."""
    if request.param == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML was built without libyaml")
    else:
        monkeypatch.setattr(policy_module, "_loader_class", lambda: policy_module._PythonLoader)
    yield request.param


def refused(text: str | Path) -> PolicyError:
    """The PolicyError loading ``text`` raises (the test fails if it loads)."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_yaml(text)
    return caught.value


def bomb(levels: int, width: int = 10) -> str:
    """A "billion laughs" document: each anchor repeats the one before ``width`` times."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# -- aliases -------------------------------------------------------------------------------


def test_an_alias_bomb_too_large_to_ever_expand_is_refused(loader: str) -> None:
    text = bomb(levels=40)  # 10**40 values once expanded: only a refusal can end this test
    assert len(text) < 3000
    error = refused(text)
    [issue] = error.issues
    assert issue.path == "l5"  # the first anchor over the cap, named by its key
    assert issue.value == "1,111,111 values"
    assert f"at most {MAX_POLICY_VALUES:,} values" in issue.expected
    assert "alias counting as all the values it repeats" in issue.expected


def test_a_bomb_just_over_the_value_cap_is_refused_and_one_under_it_is_read(loader: str) -> None:
    over = refused(bomb(levels=3, width=60))  # 1 + 60 * (1 + 60 * 61) = 219,661 values
    assert over.issues[0].value == "219,661 values"
    under = refused(bomb(levels=3, width=50))  # 127,551 values: read, then not a policy
    assert "values" not in str(under) and "one of the known fields" in str(under)


def test_aliases_and_merge_keys_within_the_caps_still_load(loader: str) -> None:
    policy = Policy.from_yaml(
        """
defaults:
  quotas: &quotas
    max_tokens_per_task: &ceiling { limit: 5000, warn_at: 0.8 }
agents:
  planner: { quotas: *quotas }
  executor:
    quotas:
      <<: *quotas
      max_tool_calls_per_task: 10
      max_cost_usd_per_task: *ceiling
"""
    )
    assert policy.agents["planner"].quotas == policy.defaults.quotas
    executor = policy.agents["executor"].quotas
    assert executor.max_tokens_per_task == executor.max_cost_usd_per_task
    assert executor.max_tool_calls_per_task is not None


def test_a_recursive_alias_is_refused(loader: str) -> None:
    error = refused("agents: &a { planner: *a }\n")
    assert "repeats a mapping or list from inside itself" in str(error)


# -- nesting -------------------------------------------------------------------------------


def nested(levels: int) -> str:
    """``x`` holding lists nested so that the document has ``levels`` levels in all."""
    inner = levels - 1  # the top-level mapping is the first level
    return "x: " + "[" * inner + "1" + "]" * inner + "\n"


def test_nesting_is_capped(loader: str) -> None:
    at_cap = refused(nested(MAX_POLICY_DEPTH))  # read, then refused as a policy
    assert "levels" not in str(at_cap) and "one of the known fields" in str(at_cap)
    over = refused(nested(MAX_POLICY_DEPTH + 1))
    [issue] = over.issues
    assert issue.value == f"more than {MAX_POLICY_DEPTH} levels"
    assert issue.path == "x" + "[0]" * (MAX_POLICY_DEPTH - 1)
    assert f"at most {MAX_POLICY_DEPTH} levels of nested mappings and lists" in issue.expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x: " + "[" * 100_000 + "]" * 100_000 + "\n", id="flow-lists"),
        pytest.param("x: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", id="flow-mappings"),
        pytest.param("x:\n" + "- " * 5_000 + "1\n", id="block-lists"),
        pytest.param("x:\n" + "".join(f"{' ' * i}k:\n" for i in range(1, 400)), id="block-maps"),
    ],
)
def test_deep_nesting_is_a_policy_error_never_a_recursion_error(loader: str, text: str) -> None:
    error = refused(text)
    assert "nesting" in str(error) or "levels" in str(error)


def test_an_alias_reaching_past_the_depth_cap_is_refused(loader: str) -> None:
    deep = "[" * 40 + "1" + "]" * 40
    text = f"a: &deep {deep}\nb: {'[' * 30}*deep{']' * 30}\n"  # b reaches 1 + 30 + 40 levels
    error = refused(text)
    assert "levels" in error.issues[0].value


# -- numbers -------------------------------------------------------------------------------


def test_a_five_thousand_digit_integer_is_a_policy_error(loader: str) -> None:
    error = refused("defaults:\n  estimate:\n    tokens: " + "9" * 5000 + "\n")
    [issue] = error.issues
    assert issue.path == "defaults.estimate.tokens"
    assert issue.expected == "a number at most 1e15"


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("defaults: {estimate: {tokens: 1000000000000001}}", "defaults.estimate.tokens", "1e15"),
        ("global: {max_concurrent_tasks: 10000000000000000}", "global", "1e15"),
        ("models: {m: {input_per_1k: 1.0e+300, output_per_1k: 1}}", "models.m", "1e15"),
        ("agents: {a: {quotas: {max_tokens_per_task: .nan}}}", "agents.a.quotas", "number >= 0"),
        ("agents: {a: {quotas: {max_tokens_per_task: .inf}}}", "agents.a.quotas", "at most 1e15"),
        ("agents: {a: {quotas: {max_tokens_per_task: -.inf}}}", "agents.a.quotas", ">= 0"),
        ("agents: {a: {quotas: {max_tokens_per_task: -1}}}", "agents.a.quotas", ">= 0"),
        ("agents: {a: {quotas: {max_cost_usd_per_task: {limit: 1, hard_ceiling: .nan}}}}", "", ""),
        ("defaults: {warn_at: .nan}", "defaults.warn_at", "fraction"),
        ("defaults: {estimate: {cost_usd: -0.5}}", "defaults.estimate.cost_usd", ">= 0"),
        ("models: {m: {input_per_1k: .nan, output_per_1k: 1}}", "models.m.input_per_1k", ""),
        ("tools: {t: {max_qps: .inf}}", "tools.t.max_qps", "at most 1e15"),
        ("tools: {t: {max_qps: 0}}", "tools.t.max_qps", "> 0"),
        ("agents: {a: {throttle: {rate_per_sec: .nan, burst: 1}}}", "agents.a.throttle", "> 0"),
        ("agents: {a: {throttle: {rate_per_sec: 0.000001, burst: 1}}}", "agents.a", "a day"),
        ("agents: {a: {throttle: {rate_per_sec: 1, burst: -1}}}", "agents.a.throttle", ">= 1"),
        ("agents: {a: {anomaly: {factor: 2, alpha: .nan}}}", "agents.a.anomaly.alpha", "(0, 1]"),
        ("agents: {a: {loop_detection: {max_cycle_length: 1.0e+20}}}", "agents.a", "2 to 16"),
        ("shared: {lease_dispatches: 1.0e+16}", "shared.lease_dispatches", "1e15"),
        ("risk_tiers: {pay: {max_cost_usd_per_task: -1}}", "risk_tiers.pay", ">= 0"),
    ],
)
def test_every_number_is_range_checked_at_load(text: str, path: str, expected: str) -> None:
    error = refused(text)
    assert any(i.path.startswith(path) and expected in i.expected for i in error.issues), error


def test_the_largest_numbers_load() -> None:
    policy = Policy.from_yaml(
        f"""
defaults: {{ estimate: {{ tokens: {MAX_NUMBER}, cost_usd: {MAX_NUMBER} }} }}
agents:
  a:
    quotas: {{ max_tokens_per_task: {MAX_NUMBER} }}
    throttle: {{ rate_per_sec: {1 / 86400}, burst: 1 }}
"""
    )
    assert policy.defaults.estimate.tokens == MAX_NUMBER


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), 10**400, -(10**400), 10**15 + 1]
)
def test_numbers_from_python_are_range_checked_too(value: float) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"defaults": {"estimate": {"tokens": value}}})
    assert caught.value.issues[0].path == "defaults.estimate.tokens"


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("agents: {a: {quotas: {max_wall_time_per_task: 99999999999999d}}}", ""),
        ("agents: {a: {quotas: {max_wall_time_per_task: 3651d}}}", ""),
        ("agents: {a: {quotas: {max_wall_time_per_task: 1000000000000}}}", ""),
        ("agents: {a: {quotas: {max_wall_time_per_task: {limit: 99999999d}}}}", ".limit"),
        ("agents: {a: {quotas: {max_wall_time_per_task: {limit: 1h, hard_ceiling: 9999d}}}}", ""),
        ("agents: {a: {quotas: {max_wall_time_per_task: " + "9" * 400 + "s}}}", ""),
    ],
)
def test_a_wall_time_that_cannot_be_a_deadline_is_refused(text: str, path: str) -> None:
    error = refused(text)
    [issue] = error.issues
    assert issue.path.startswith("agents.a.quotas.max_wall_time_per_task" + path)
    assert issue.expected == "a duration of at most 3650d (about 10 years)"


def test_the_longest_wall_time_is_a_deadline_that_fits() -> None:
    policy = Policy.from_yaml("agents: {a: {quotas: {max_wall_time_per_task: 3650d}}}")
    spec = policy.quotas_for("a").max_wall_time_per_task
    assert spec is not None and spec.limit == MAX_DURATION_S
    # what the run interceptor computes for its deadline; it overflowed before
    assert datetime.now(UTC) + timedelta(seconds=spec.limit) < datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "shared: {max_wait: 99999999999999d}",
        "shared: {max_wait: 1000000000000}",
        "control: {max_clock_skew: 4000d}",
        "agents: {a: {loop_detection: {action: throttle, throttle_delay: 9999999999}}}",
        "agents: {a: {anomaly: {factor: 2, throttle_delay: 9999d}}}",
        "agents: {a: {anomaly: {factor: 2, predictive: {expected_duration: 1h, max_delay: 9999d}}}}",
        "shared: {reservation_ttl: 99999999999999d}",
        "control: {pause_timeout: .inf}",
    ],
)
def test_every_duration_is_range_checked(text: str) -> None:
    error = refused(text)
    assert "at most" in str(error) and ("3650d" in str(error) or "30 days" in str(error))


# -- characters, keys and scalars ----------------------------------------------------------


@pytest.mark.parametrize("character", ["\x00", "\x07", "\x1b", "\x7f", "\ufffe"])
def test_nul_and_control_characters_are_a_policy_error(character: str) -> None:
    error = refused(f"agents:\n  pla{character}nner: {{}}\n")
    [issue] = error.issues
    assert issue.path == "line 2, column 6"
    assert issue.value == character
    assert issue.expected.startswith("printable text")


def test_a_nul_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "governance.yaml"
    path.write_bytes(b"agents: {}\n\x00\n")
    error = refused(path)
    assert error.issues[0].source == str(path)
    assert error.issues[0].path == "line 2, column 1"


@pytest.mark.parametrize("key", ["~", "null", "yes", "on", "12", "1.5", "2024-01-01", "[a, b]"])
def test_a_key_that_is_not_a_string_is_a_policy_error(loader: str, key: str) -> None:
    for text in (f"{key}: 1\n", f"agents:\n  {key}: {{}}\n", f"? {key}\n: 1\n"):
        error = refused(text)
        assert "keys that are strings" in error.issues[0].expected, text


def test_a_none_key_from_python_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="keys that are strings"):
        Policy.from_dict({None: 1})  # type: ignore[dict-item]
    with pytest.raises(PolicyError):
        Policy.from_dict({"agents": {None: {}}})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("2024-13-45", "a valid timestamp"),
        ("!!int abc", "a valid int"),
        ("!!float abc", "a valid float"),
        ("!!binary a", "base64"),
        ("!!python/object:os.system x", "python/object"),
        ("!!bool maybe", "a valid bool"),
        ("0b" + "1" * 5000, "a number at most 1e15"),
        ("1" + ":0" * 5000, "a number at most 1e15"),  # a YAML 1.1 sexagesimal integer
    ],
)
def test_a_scalar_its_tag_cannot_take_is_a_policy_error(
    loader: str, scalar: str, expected: str
) -> None:
    error = refused(f"agents:\n  a:\n    version: {scalar}\n")
    assert expected in str(error)


def test_an_undefined_alias_and_a_second_document_are_policy_errors(loader: str) -> None:
    assert "alias" in str(refused("agents: *nowhere\n"))
    assert "single document" in str(refused("agents: {}\n---\ntools: {}\n"))


# -- size ----------------------------------------------------------------------------------


def tenants(size: int) -> str:
    """A plausible policy of many tenant entries, as close to ``size`` bytes as it gets."""
    lines, total = ["tenants:"], 9
    for i in range(size):
        line = (
            f"  tenant-{i:07d}: {{ quotas: {{ max_tokens: 100000, max_cost_usd_per_day: 5 }},"
            " per_owner: { max_tokens: 1000 } }"
        )
        if total + len(line) + 1 > size:
            break
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def test_a_10_mb_policy_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    text = tenants(10_000_000)
    assert len(text) > 9_900_000
    error = refused(text)
    [issue] = error.issues
    assert issue.expected == f"a policy of at most {MAX_POLICY_BYTES:,} bytes (1 MiB)"
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    [issue] = refused(path).issues
    assert (issue.source, issue.value) == (str(path), f"{len(text):,} bytes")


def test_a_file_is_read_no_further_than_the_cap() -> None:
    endless = Path("/dev/zero")  # would never end if it were read to the end
    if not endless.exists():
        pytest.skip("no /dev/zero")
    error = refused(endless)
    assert "at most 1,048,576 bytes" in str(error)


def test_the_cap_counts_utf8_bytes_not_characters() -> None:
    text = "agents: {}\n# " + "é" * (MAX_POLICY_BYTES // 2) + "\n"  # fewer chars than bytes
    assert len(text) < MAX_POLICY_BYTES < len(text.encode())
    assert "at most 1,048,576 bytes" in str(refused(text))


def test_a_policy_just_under_the_cap_loads() -> None:
    text = tenants(MAX_POLICY_BYTES)
    assert MAX_POLICY_BYTES - 200 < len(text.encode()) <= MAX_POLICY_BYTES
    policy = Policy.from_yaml(text)
    assert len(policy.tenants) > 9000


def test_many_problems_are_listed_up_to_a_hundred() -> None:
    text = "agents:\n  a:\n    workflow_types: [" + ", ".join(["1"] * 50_000) + "]\n"
    error = refused(text)
    assert len(error.issues) == 101
    assert error.issues[0].path == "agents.a.workflow_types[0]"
    assert "only the first 100 are listed" in error.issues[-1].expected


# -- fuzzing: whatever the bytes, a policy or a PolicyError --------------------------------

YAMLISH = st.text(
    alphabet=st.sampled_from(list("abq019-_.:,[]{}&*!|>'\"#%@`?~ \t\n\r\x00\x07\u00e9")),
    max_size=200,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAMLISH)
def test_fuzz_yaml_text_loads_or_raises_policy_error(text: str) -> None:
    try:
        policy = Policy.from_yaml(text + "\n")  # a line break: never taken for a file name
    except PolicyError as error:
        assert error.issues and all(issue.source == "<text>" for issue in error.issues)
    else:
        assert policy.source == "<text>"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_fuzz_file_bytes_load_or_raise_policy_error(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "policy.yaml"
    path.write_bytes(data)
    try:
        Policy.from_yaml(path)
    except PolicyError as error:
        assert all(issue.source == str(path) for issue in error.issues)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1h", "99999999999999d", "0.5", "terminate", "alert", "3650d"]),
)
KEYS = st.sampled_from(
    [
        "agents",
        "tools",
        "tenants",
        "defaults",
        "quotas",
        "limit",
        "max_tokens_per_task",
        "max_wall_time_per_task",
        "hard_ceiling",
        "estimate",
        "tokens",
        "throttle",
        "rate_per_sec",
        "burst",
        "shared",
        "max_wait",
        "planner",
    ]
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=st.dictionaries(KEYS, DOCUMENTS, max_size=4))
def test_fuzz_policy_shaped_documents_load_or_raise_policy_error(document: Any) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        policy = Policy.from_yaml(text)
    except PolicyError:
        return
    for quotas in [policy.defaults.quotas, *(a.quotas for a in policy.agents.values())]:
        for spec in quotas.per_task().values():
            assert math.isfinite(spec.limit) and 0 <= spec.limit <= MAX_NUMBER
        wall = quotas.max_wall_time_per_task
        assert wall is None or wall.ceiling <= MAX_DURATION_S
