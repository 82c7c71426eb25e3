"""Unit tests of the pure detectors: each fires on its pattern and stays quiet on a healthy one."""

from __future__ import annotations

import enum
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from temporal_governor.core.detectors import (
    AnomalyRule,
    BaselineState,
    LoopDetector,
    LoopRules,
    SpendBaseline,
    TokenBucket,
    Verdict,
    agent_cycle,
    call_signature,
    exhaustion_verdict,
    predictive_delay,
    projected_exhaustion,
)
from temporal_governor.errors import PolicyError

# -- call_signature -----------------------------------------------------------------------


class Query(BaseModel):
    text: str
    k: int
    score: float


@dataclass
class Doc:
    name: str
    weight: float


class Colour(enum.Enum):
    RED = "red"


def test_signature_is_stable_across_key_order_and_whitespace() -> None:
    a = call_signature("call_llm", [{"prompt": "  hello\n  world ", "temperature": 0.7}])
    b = call_signature("call_llm", [{"temperature": 0.7, "prompt": "hello world"}])
    assert a == b
    assert len(a) == 16
    assert all(c in "0123456789abcdef" for c in a)


def test_signature_rounds_floats_to_twelve_significant_digits() -> None:
    assert call_signature("t", [0.1 + 0.2]) == call_signature("t", [0.3])
    assert call_signature("t", [1.0000000000001]) == call_signature("t", [1])
    assert call_signature("t", [1.0]) == call_signature("t", [1])
    assert call_signature("t", [0.12345]) != call_signature("t", [0.12346])
    # distinct large amounts and epoch timestamps stay distinct
    assert call_signature("t", [1234567.0]) != call_signature("t", [1234568.0])
    assert call_signature("t", [1732800000.0]) != call_signature("t", [1732800400.0])
    assert call_signature("t", [-0.0]) == call_signature("t", [0.0])
    assert call_signature("t", [math.nan]) == call_signature("t", [math.nan])


def test_signature_distinguishes_target_and_arguments() -> None:
    base = call_signature("search", ["cats"])
    assert call_signature("read", ["cats"]) != base
    assert call_signature("search", ["dogs"]) != base
    assert call_signature("search", ["cats", 1]) != base
    assert call_signature("search", [True]) != call_signature("search", [1])
    assert call_signature("search", ["1"]) != call_signature("search", [1])
    # the target is not merged with the arguments
    assert call_signature("ab", ["c"]) != call_signature("a", ["bc"])


def test_signature_normalises_models_dataclasses_enums_and_collections() -> None:
    model = Query(text=" find   cats ", k=3, score=0.5)
    assert call_signature("t", [model]) == call_signature(
        "t", [{"k": 3, "score": 0.5, "text": "find cats"}]
    )
    assert call_signature("t", [Doc("a  b", 2.0)]) == call_signature(
        "t", [{"weight": 2, "name": "a b"}]
    )
    assert call_signature("t", [Colour.RED]) == call_signature("t", ["red"])
    assert call_signature("t", [(1, 2)]) == call_signature("t", [[1, 2]])
    assert call_signature("t", [{"b", "a", "c"}]) == call_signature("t", [frozenset("cab")])
    assert call_signature("t", [{1: "x"}]) == call_signature("t", [{"1": "x"}])
    assert call_signature("t", [{"nested": {"z": [1.0000000000001], "a": None}}]) == call_signature(
        "t", [{"nested": {"a": None, "z": [1]}}]
    )


def test_signature_is_the_same_in_another_process() -> None:
    args = [{"prompt": "hi  there", "n": 2.5, "tags": ["x", "y"]}]
    here = call_signature("call_llm", args)
    code = (
        "import json, sys; from temporal_governor.core.detectors import call_signature; "
        "print(call_signature('call_llm', json.loads(sys.argv[1])))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert there == here


def test_a_model_with_a_set_field_hashes_alike_under_any_hash_seed() -> None:
    code = (
        "from pydantic import BaseModel; from temporal_governor.core.detectors import call_signature\n"
        "class Q(BaseModel):\n    tags: set[str]\n"
        "print(call_signature('t', [Q(tags={'news', 'sports', 'weather', 'tech'})]))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("4", "12", "14", "26", "27", "1")
    }
    assert len(seen) == 1


# -- LoopDetector: repeated signatures ----------------------------------------------------


def test_repeated_signature_fires_with_evidence() -> None:
    detector = LoopDetector(LoopRules(signature_window=32, max_repeats=3, max_cycle_repeats=None))
    sig = call_signature("call_llm", [{"prompt": "same"}])
    verdicts = [detector.on_dispatch("call_llm", sig) for _ in range(4)]
    assert verdicts[:3] == [None, None, None]
    verdict = verdicts[3]
    assert verdict is not None
    assert verdict.detector == "repeated_signature"
    assert verdict.action == "terminate"
    assert verdict.message == "call_llm with the same arguments 4 times in the last 4 dispatches"
    assert verdict.evidence == {
        "target": "call_llm",
        "signature": sig,
        "count": 4,
        "window": 4,
        "max_repeats": 3,
    }


def test_repeated_signature_counts_only_inside_the_window() -> None:
    detector = LoopDetector(LoopRules(signature_window=5, max_repeats=2, max_cycle_repeats=None))
    same = call_signature("fetch", ["a"])
    for i in range(20):
        # the same call every 4th dispatch: at most 2 of them in any 5 consecutive
        target_sig = same if i % 4 == 0 else call_signature("fetch", [f"other-{i}"])
        assert detector.on_dispatch("fetch", target_sig) is None


def test_same_tool_with_different_arguments_does_not_fire() -> None:
    detector = LoopDetector(
        LoopRules(signature_window=32, max_repeats=3, max_iterations=100, action="alert")
    )
    for i in range(30):
        sig = call_signature("summarise", [{"document": f"doc-{i}.pdf"}])
        assert detector.on_dispatch("summarise", sig) is None
    assert detector.iterations == 30


# -- LoopDetector: tool cycles ------------------------------------------------------------


def test_tool_cycle_fires_on_search_read_repeated() -> None:
    detector = LoopDetector(LoopRules(max_cycle_length=4, max_cycle_repeats=3))
    verdicts = []
    for i in range(4):
        # different arguments every time: the cycle check looks at targets only
        verdicts.append(detector.on_dispatch("search", call_signature("search", [i])))
        verdicts.append(detector.on_dispatch("read", call_signature("read", [i])))
    assert verdicts[:-1] == [None] * 7
    verdict = verdicts[-1]
    assert verdict is not None
    assert verdict.detector == "tool_cycle"
    assert verdict.evidence == {"cycle": ["search", "read"], "count": 4, "max_repeats": 3}
    assert "search -> read" in verdict.message


def test_tool_cycle_of_three_and_its_shortest_period() -> None:
    detector = LoopDetector(LoopRules(max_cycle_length=4, max_cycle_repeats=2))
    pattern = ["plan", "act", "observe"] * 3
    verdicts = [detector.on_dispatch(t, call_signature(t, [i])) for i, t in enumerate(pattern)]
    assert verdicts[:-1] == [None] * 8
    last = verdicts[-1]
    assert last is not None
    assert last.evidence["cycle"] == ["plan", "act", "observe"]
    assert last.evidence["count"] == 3


def test_tool_cycle_reports_the_shortest_cycle_not_a_multiple() -> None:
    detector = LoopDetector(LoopRules(max_cycle_length=4, max_cycle_repeats=1))
    verdict = None
    for i, target in enumerate(["a", "b", "a", "b"]):
        verdict = detector.on_dispatch(target, call_signature(target, [i]))
    assert verdict is not None
    assert verdict.evidence["cycle"] == ["a", "b"]


def test_same_tool_over_and_over_is_not_a_tool_cycle() -> None:
    # a map over 20 documents with one tool: different args, one target
    detector = LoopDetector(LoopRules(signature_window=32, max_cycle_length=4, max_cycle_repeats=3))
    for i in range(20):
        assert detector.on_dispatch("summarise", call_signature("summarise", [f"doc-{i}"])) is None


def test_varied_tool_sequence_does_not_fire_cycle() -> None:
    detector = LoopDetector(LoopRules(max_cycle_length=4, max_cycle_repeats=3))
    # a healthy agent: the same tools come back, but never as a tight back-to-back loop
    sequence = [
        "plan", "search", "read", "read", "search", "read", "summarise", "plan",
        "search", "read", "read", "read", "write", "plan", "search", "read",
        "critique", "write", "search", "read", "summarise", "write", "plan", "done",
    ]  # fmt: skip
    for i, target in enumerate(sequence):
        assert detector.on_dispatch(target, call_signature(target, [i])) is None


def test_cycle_check_has_its_own_knob() -> None:
    detector = LoopDetector(LoopRules(max_cycle_repeats=None))
    for i in range(20):
        target = "plan" if i % 2 == 0 else "act"
        assert detector.on_dispatch(target, call_signature(target, [i])) is None


def test_cycle_broken_by_another_tool_is_forgotten() -> None:
    detector = LoopDetector(LoopRules(max_cycle_length=3, max_cycle_repeats=3))
    sequence = ["search", "read"] * 3 + ["write"] + ["search", "read"] * 3
    for i, target in enumerate(sequence):
        assert detector.on_dispatch(target, call_signature(target, [i])) is None


# -- LoopDetector: failures and iterations ------------------------------------------------


def test_consecutive_failures_fire_and_success_resets() -> None:
    detector = LoopDetector(LoopRules(max_consecutive_failures=3, action="alert"))
    for _ in range(3):
        assert detector.on_result("call_llm", ok=False) is None
    assert detector.on_result("call_llm", ok=True) is None
    assert detector.consecutive_failures == 0
    assert detector.on_result("search", ok=False) is None
    assert detector.on_result("call_llm", ok=False) is None
    assert detector.on_result("call_llm", ok=False) is None
    verdict = detector.on_result("read", ok=False)
    assert verdict is not None
    assert verdict.detector == "consecutive_failures"
    assert verdict.action == "alert"
    assert verdict.evidence == {
        "target": "read",
        "count": 4,
        "max": 3,
        "targets": ["search", "call_llm", "call_llm", "read"],
    }


def test_interleaved_failures_do_not_fire() -> None:
    detector = LoopDetector(LoopRules(max_consecutive_failures=2))
    for i in range(30):
        assert detector.on_result("flaky", ok=i % 2 == 0) is None


def test_iterations_cap() -> None:
    detector = LoopDetector(LoopRules(max_iterations=10, max_cycle_repeats=None))
    for i in range(10):
        assert detector.on_dispatch("t", call_signature("t", [i])) is None
    verdict = detector.on_dispatch("t", call_signature("t", [10]))
    assert verdict is not None
    assert verdict.detector == "iterations"
    assert verdict.evidence == {"target": "t", "iterations": 11, "max": 10}


def test_no_rules_means_no_verdicts() -> None:
    detector = LoopDetector(LoopRules(max_cycle_repeats=None))
    for _ in range(100):
        assert detector.on_dispatch("t", "same") is None
        assert detector.on_result("t", ok=False) is None


def test_loop_detector_state_survives_continue_as_new() -> None:
    rules = LoopRules(signature_window=10, max_repeats=3, max_cycle_repeats=3)
    first = LoopDetector(rules)
    for _ in range(3):
        assert first.on_dispatch("call_llm", "sig-1") is None
    first.on_result("call_llm", ok=False)
    state = first.state()
    restored = LoopDetector(rules, type(state).model_validate_json(state.model_dump_json()))
    assert restored.iterations == 3
    assert restored.consecutive_failures == 1
    verdict = restored.on_dispatch("call_llm", "sig-1")
    assert verdict is not None
    assert verdict.evidence["count"] == 4


def test_loop_rules_are_validated() -> None:
    with pytest.raises(ValidationError):
        LoopRules(signature_window=0)
    with pytest.raises(ValidationError):
        LoopRules(max_cycle_length=1)
    with pytest.raises(ValidationError):
        LoopRules(unknown=1)  # type: ignore[call-arg]


# -- agent_cycle --------------------------------------------------------------------------


def test_agent_cycle_fires_on_planner_executor_ping_pong() -> None:
    verdict = agent_cycle(["planner", "executor", "planner", "executor"], "planner")
    assert verdict is not None
    assert verdict.detector == "agent_cycle"
    assert verdict.action == "terminate"
    assert verdict.evidence["cycle"] == ["planner", "executor", "planner", "executor", "planner"]
    assert verdict.evidence["repeated_subsequence"] == ["planner", "executor"]
    assert verdict.evidence["repetitions"] == 2
    assert verdict.evidence["visits"] == 3
    assert verdict.evidence["max_visits"] == 2
    assert "planner -> executor -> planner -> executor -> planner" in verdict.message


def test_agent_cycle_evidence_starts_at_first_visit() -> None:
    verdict = agent_cycle(["root", "planner", "critic", "planner"], "planner", max_visits=2)
    assert verdict is not None
    assert verdict.evidence["cycle"] == ["planner", "critic", "planner", "planner"]
    assert verdict.evidence["chain"] == ["root", "planner", "critic", "planner", "planner"]
    assert verdict.evidence["repeated_subsequence"] == ["planner"]


def test_agent_tree_without_revisits_does_not_fire() -> None:
    assert agent_cycle([], "planner") is None
    assert agent_cycle(["planner"], "executor") is None
    assert agent_cycle(["planner", "executor"], "critic") is None
    # one revisit is within the default max_visits=2
    assert agent_cycle(["planner", "executor"], "planner") is None
    assert agent_cycle(["planner", "executor", "planner"], "executor") is None


def test_agent_cycle_max_visits_and_action() -> None:
    assert agent_cycle(["summarise", "summarise"], "summarise", max_visits=3) is None
    verdict = agent_cycle(["planner"], "planner", max_visits=1, action="alert")
    assert verdict is not None
    assert verdict.action == "alert"


# -- TokenBucket --------------------------------------------------------------------------


def test_bucket_waits_for_twenty_takes_at_once() -> None:
    bucket = TokenBucket(rate_per_sec=10, burst=5)
    waits = [bucket.take(0.0) for _ in range(20)]
    assert waits == pytest.approx([0.0] * 5 + [i / 10 for i in range(1, 16)])


def test_bucket_refills_after_time_passes() -> None:
    bucket = TokenBucket(rate_per_sec=10, burst=5)
    for _ in range(20):
        bucket.take(0.0)
    # the 20th take was booked for t=1.5; the next one queues behind it
    assert bucket.take(1.5) == pytest.approx(0.1)
    # long after, the bucket is full again, but never holds more than burst
    later = [bucket.take(100.0) for _ in range(6)]
    assert later == pytest.approx([0.0] * 5 + [0.1])
    assert bucket.available(100.05) == pytest.approx(-0.5)
    assert bucket.available(200.0) == pytest.approx(5.0)


def test_bucket_steady_rate_never_waits() -> None:
    bucket = TokenBucket(rate_per_sec=2, burst=1)
    for i in range(50):
        assert bucket.take(i * 0.5) == 0.0


def test_bucket_weighted_take_and_state_round_trip() -> None:
    bucket = TokenBucket(rate_per_sec=4, burst=8)
    assert bucket.take(10.0, tokens=6) == 0.0
    state = bucket.state()
    assert json.loads(json.dumps(state)) == state
    assert state == {"rate_per_sec": 4.0, "burst": 8.0, "tokens": 2.0, "updated_at": 10.0}
    copy = TokenBucket.from_state(state)
    assert copy.take(10.5, tokens=6) == pytest.approx(bucket.take(10.5, tokens=6))
    assert copy.state() == bucket.state()


@given(
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60),
    st.floats(min_value=0.5, max_value=20),
    st.integers(min_value=1, max_value=8),
)
def test_bucket_never_lets_more_through_than_rate_allows(
    gaps: list[float], rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate_per_sec=rate, burst=burst)
    now = 0.0
    starts = []
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0.0
        starts.append(now + wait)
    # dispatches start in order, and no interval lets through more than burst + rate * length
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(starts))
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= burst + rate * (starts[j] - first) + 1e-6


def test_bucket_rejects_bad_settings() -> None:
    with pytest.raises(PolicyError):
        TokenBucket(rate_per_sec=0, burst=5)
    with pytest.raises(PolicyError):
        TokenBucket(rate_per_sec=1, burst=0.5)
    with pytest.raises(PolicyError):
        TokenBucket(rate_per_sec=1, burst=1).take(0.0, tokens=-1)


# -- SpendBaseline and AnomalyRule --------------------------------------------------------


def test_ewma_matches_hand_computed_sequence() -> None:
    baseline = SpendBaseline(alpha=0.5, min_samples=1)
    baseline.update(10)
    assert (baseline.mean, baseline.variance) == (10.0, 0.0)
    baseline.update(20)
    # diff=10, incr=5 -> mean=15, var=0.5*(0+10*5)=25
    assert (baseline.mean, baseline.variance) == pytest.approx((15.0, 25.0))
    baseline.update(20)
    # diff=5, incr=2.5 -> mean=17.5, var=0.5*(25+5*2.5)=18.75
    assert (baseline.mean, baseline.variance) == pytest.approx((17.5, 18.75))
    baseline.update(5)
    # diff=-12.5, incr=-6.25 -> mean=11.25, var=0.5*(18.75+78.125)=48.4375
    assert (baseline.mean, baseline.variance) == pytest.approx((11.25, 48.4375))
    assert baseline.std == pytest.approx(math.sqrt(48.4375))
    assert baseline.count == 4


def test_ewma_default_alpha() -> None:
    baseline = SpendBaseline()
    for value in [100, 100, 200]:
        baseline.update(value)
    # third: diff=100, incr=20 -> mean=120, var=0.8*(0+100*20)=1600
    assert baseline.mean == pytest.approx(120.0)
    assert baseline.variance == pytest.approx(1600.0)
    assert baseline.std == pytest.approx(40.0)


def test_zscore_and_ratio_wait_for_min_samples() -> None:
    baseline = SpendBaseline(alpha=0.2, min_samples=5)
    for value in [100, 110, 90, 105]:
        baseline.update(value)
        assert baseline.zscore(150) is None
        assert baseline.ratio(150) is None
    baseline.update(95)
    z = baseline.zscore(150)
    assert z == pytest.approx((150 - baseline.mean) / baseline.std)
    assert baseline.ratio(150) == pytest.approx(150 / baseline.mean)


def test_zscore_with_zero_variance() -> None:
    baseline = SpendBaseline(min_samples=2)
    for _ in range(3):
        baseline.update(7)
    assert baseline.zscore(7) == 0.0
    assert baseline.zscore(8) == math.inf


def test_baseline_state_round_trip() -> None:
    baseline = SpendBaseline(alpha=0.3, min_samples=3)
    for value in [1.0, 4.0, 2.0, 8.0]:
        baseline.update(value)
    state = baseline.state()
    assert isinstance(state, BaselineState)
    copy = SpendBaseline.from_state(BaselineState.model_validate_json(state.model_dump_json()))
    assert (copy.mean, copy.variance, copy.count, copy.alpha) == (
        baseline.mean,
        baseline.variance,
        baseline.count,
        baseline.alpha,
    )
    assert SpendBaseline.from_state(state.model_dump()).zscore(9) == baseline.zscore(9)


def _noisy_baseline() -> SpendBaseline:
    baseline = SpendBaseline(alpha=0.2)
    for value in [1000, 1100, 950, 1020, 980, 1050, 990, 1010, 970, 1030]:
        baseline.update(value)
    return baseline


def test_anomaly_fires_on_ten_times_baseline() -> None:
    baseline = _noisy_baseline()
    rule = AnomalyRule(factor=3.0, zscore=4.0)
    verdict = rule.check(baseline, 10 * baseline.mean, "tokens of call_llm")
    assert verdict is not None
    assert verdict.detector == "anomaly"
    assert verdict.action == "alert"
    evidence = verdict.evidence
    assert evidence["value"] == pytest.approx(10 * baseline.mean)
    assert evidence["mean"] == baseline.mean
    assert evidence["std"] == baseline.std
    assert evidence["ratio"] == pytest.approx(10.0)
    assert evidence["z"] > 4.0
    assert evidence["factor"] == 3.0
    assert evidence["zscore"] == 4.0
    assert "tokens of call_llm" in verdict.message
    assert "10.0x" in verdict.message


def test_anomaly_silent_on_modest_rise() -> None:
    baseline = _noisy_baseline()
    rule = AnomalyRule(factor=3.0, zscore=4.0)
    assert rule.check(baseline, 1.2 * baseline.mean, "tokens of call_llm") is None
    assert rule.check(baseline, 0.1 * baseline.mean, "tokens of call_llm") is None


def test_anomaly_each_criterion_alone() -> None:
    baseline = _noisy_baseline()
    by_factor = AnomalyRule(factor=1.5, action="throttle").check(baseline, 1.6 * baseline.mean, "x")
    assert by_factor is not None
    assert by_factor.action == "throttle"
    assert AnomalyRule(factor=1.5).check(baseline, 1.4 * baseline.mean, "x") is None
    value = baseline.mean + 5 * baseline.std
    assert AnomalyRule(zscore=4.0, min_std_ratio=0).check(baseline, value, "x") is not None
    assert AnomalyRule(zscore=6.0, min_std_ratio=0).check(baseline, value, "x") is None
    # the floor (5% of the mean here, above this baseline's std) makes z more conservative
    assert baseline.std < 0.05 * baseline.mean
    assert AnomalyRule(zscore=4.0).check(baseline, value, "x") is None
    assert AnomalyRule().check(baseline, 100 * baseline.mean, "x") is None


def test_anomaly_needs_min_samples() -> None:
    baseline = SpendBaseline()
    for value in [10, 11, 9, 10]:
        baseline.update(value)
    assert AnomalyRule(factor=2.0, min_samples=5).check(baseline, 1000, "x") is None
    assert AnomalyRule(factor=2.0, min_samples=4).check(baseline, 1000, "x") is not None


def test_anomaly_constant_baseline_tolerates_small_change() -> None:
    baseline = SpendBaseline()
    for _ in range(10):
        baseline.update(500)
    rule = AnomalyRule(zscore=4.0)
    # std is 0; the floor (5% of the mean) keeps a 10% rise from being infinitely anomalous
    assert rule.check(baseline, 550, "x") is None
    verdict = rule.check(baseline, 700, "x")
    assert verdict is not None
    assert verdict.evidence["z"] == pytest.approx(200 / 25)
    # with no floor any rise is infinitely anomalous; z is reported as None then
    strict = AnomalyRule(zscore=4.0, min_std_ratio=0).check(baseline, 501, "x")
    assert strict is not None
    assert strict.evidence["z"] is None


# -- burn-rate projection -----------------------------------------------------------------


def test_projected_exhaustion() -> None:
    assert projected_exhaustion(25.0, 100.0, 60.0, 600.0) == pytest.approx(250.0)
    assert projected_exhaustion(5.0, 100.0, 60.0, 600.0) == pytest.approx(50.0)
    assert projected_exhaustion(5.0, 100.0, 0.0, 600.0) is None


def test_exhaustion_verdict() -> None:
    verdict = exhaustion_verdict(25.0, 100.0, 60.0, 600.0, "cost_usd of run p/1")
    assert verdict is not None
    assert verdict.detector == "projected_exhaustion"
    assert verdict.evidence["projected"] == pytest.approx(250.0)
    assert verdict.evidence["exhausted_at_s"] == pytest.approx(240.0)
    assert exhaustion_verdict(5.0, 100.0, 60.0, 600.0, "x") is None
    assert exhaustion_verdict(25.0, 100.0, 60.0, 600.0, "x", min_elapsed_s=120.0) is None


def test_predictive_delay_paces_spend_to_the_expected_end() -> None:
    # 25% of the budget after 10% of the time: wait until 25% of the time (150 s)
    delay = predictive_delay(25.0, 100.0, 60.0, 600.0, max_delay_s=3600.0)
    assert delay == pytest.approx(90.0)
    # after the delay, the projection lands exactly on the ceiling
    assert projected_exhaustion(25.0, 100.0, 60.0 + delay, 600.0) == pytest.approx(100.0)
    # capped
    assert predictive_delay(25.0, 100.0, 60.0, 600.0, max_delay_s=30.0) == 30.0


def test_predictive_delay_is_zero_on_track() -> None:
    assert predictive_delay(10.0, 100.0, 60.0, 600.0, max_delay_s=60.0) == 0.0
    assert predictive_delay(5.0, 100.0, 60.0, 600.0, max_delay_s=60.0) == 0.0
    assert predictive_delay(0.0, 100.0, 0.0, 600.0, max_delay_s=60.0) == 0.0
    # past the expected end with budget left: no point holding back
    assert predictive_delay(90.0, 100.0, 900.0, 600.0, max_delay_s=60.0) == 0.0


def test_predictive_delay_when_budget_is_spent_or_settings_bad() -> None:
    assert predictive_delay(100.0, 100.0, 60.0, 600.0, max_delay_s=45.0) == 45.0
    with pytest.raises(PolicyError):
        predictive_delay(1.0, 0.0, 60.0, 600.0, max_delay_s=45.0)
    with pytest.raises(PolicyError):
        predictive_delay(1.0, 10.0, 60.0, 0.0, max_delay_s=45.0)


def test_verdict_is_frozen_and_strict() -> None:
    verdict = Verdict(detector="anomaly", action="alert", message="m", evidence={"a": 1})
    with pytest.raises(ValidationError):
        verdict.action = "terminate"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Verdict(detector="x", action="explode", message="m")
    with pytest.raises(ValidationError):
        Verdict(detector="x", action="alert", message="m", extra=1)  # type: ignore[call-arg]
