"""Signing, key loading and message checks of control messages (no server needed)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from temporal_governor import Policy, PolicyError
from temporal_governor.control import (
    Keyring,
    KeyringError,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
)
from temporal_governor.control._messages import ControlCheck, canonical

NOW = 1_800_000_000_000


def kill(**kw: Any) -> KillMessage:
    fields: dict[str, Any] = {
        "issuer": "ops",
        "workflow_id": "wf-1",
        "issued_at_ms": NOW,
        "nonce": uuid.uuid4().hex,
    }
    return KillMessage(**{**fields, **kw})


def test_canonical_form_is_sorted_compact_and_leaves_out_signature_and_relay() -> None:
    message = kill(nonce="n" * 8, relay="down")
    text = canonical(message).decode()
    assert text.startswith('{"action":"kill","agent":null,"issued_at_ms":')
    assert " " not in text and "signature" not in text and "relay" not in text
    signed = Keyring({"k": b"s"}).sign(message)
    assert canonical(signed) == canonical(message.model_copy(update={"key_id": "k"}))


def test_signature_covers_the_action_and_the_target() -> None:
    keys = Keyring({"k": b"secret"})
    signed = keys.sign(kill())
    assert keys.signature_problem(signed) is None
    as_resume = ResumeMessage(**signed.model_dump(exclude={"action", "mode"}))
    assert keys.signature_problem(as_resume) == "bad signature"
    elsewhere = signed.model_copy(update={"workflow_id": "wf-2"})
    assert keys.signature_problem(elsewhere) == "bad signature"
    assert keys.signature_problem(kill()) == "unsigned"


def test_keys_come_from_the_environment_and_a_file_never_the_policy(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("file-key: from-file\n")
    (tmp_path / "policy.yaml").write_text("control: {keys_file: keys.yaml, signing_key: env-key}\n")
    policy = Policy.from_yaml(tmp_path / "policy.yaml")
    keys = Keyring.from_policy(policy, environ={"TEMPORAL_GOVERNOR_KEYS": "env-key=from-env"})
    assert keys.keys == {"env-key": b"from-env", "file-key": b"from-file"}
    assert keys.signing_key == "env-key"
    with pytest.raises(PolicyError) as inline:
        Policy.from_yaml("control: {keys: {k: secret}}")
    assert "control.keys" in str(inline.value)


@pytest.mark.parametrize(
    ("environ", "file_text", "expected"),
    [
        ({"TEMPORAL_GOVERNOR_KEYS": "no-equals-sign"}, None, "$TEMPORAL_GOVERNOR_KEYS"),
        ({}, "[not, a, mapping]", "keys.yaml: expected a mapping"),
        ({}, None, "cannot read it"),
    ],
)
def test_bad_keys_are_clear_errors(
    tmp_path: Path, environ: dict[str, str], file_text: str | None, expected: str
) -> None:
    if file_text is not None:
        (tmp_path / "keys.yaml").write_text(file_text)
    (tmp_path / "policy.yaml").write_text("control: {keys_file: keys.yaml}\n")
    policy = Policy.from_yaml(tmp_path / "policy.yaml")
    with pytest.raises(KeyringError) as error:
        Keyring.from_policy(policy, environ=environ)
    assert expected in str(error.value)


def test_signing_without_a_key_says_how_to_configure_one() -> None:
    with pytest.raises(KeyringError, match="TEMPORAL_GOVERNOR_KEYS"):
        Keyring({}).sign(kill())


def test_hard_ceiling_below_the_limit_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as error:
        Policy.from_yaml(
            "agents: {planner: {quotas: {max_tokens_per_task: {limit: 100, hard_ceiling: 50}}}}"
        )
    assert "agents.planner.quotas.max_tokens_per_task.hard_ceiling" in str(error.value)
    assert "at or above the limit (100)" in str(error.value)


def checker(**settings: Any) -> ControlCheck:
    policy = Policy.from_dict({"control": settings})
    return ControlCheck(Keyring({"k": b"secret"}), policy.control)


def test_unsigned_kill_is_accepted_only_when_the_policy_allows_it() -> None:
    message = kill().model_dump(mode="json")
    assert checker().check("governor.kill", (message,), NOW)[1] is None
    _, problem = checker(allow_unsigned_kill=False).check("governor.kill", (message,), NOW)
    assert problem == "unsigned kill (a valid signature is required)"


def test_resume_and_override_are_never_accepted_unsigned() -> None:
    resume = ResumeMessage(issuer="x", workflow_id="w", issued_at_ms=NOW, nonce="n" * 8)
    override = OverrideMessage(
        issuer="x", workflow_id="w", issued_at_ms=NOW, nonce="m" * 8, limit="l", value=1
    )
    check = checker(allow_unsigned_kill=True)
    assert "unsigned resume" in str(check.check("governor.resume", (resume.model_dump(),), NOW)[1])
    assert "unsigned override" in str(
        check.check("governor.override", (override.model_dump(),), NOW)[1]
    )


def test_staleness_and_nonce_reuse() -> None:
    check = checker(max_clock_skew="1m")
    signed = Keyring({"k": b"secret"}).sign(kill()).model_dump(mode="json")
    assert check.check("governor.kill", (signed,), NOW + 59_000)[1] is None
    assert "replayed nonce" in str(check.check("governor.kill", (signed,), NOW + 59_000)[1])
    fresh = Keyring({"k": b"secret"}).sign(kill()).model_dump(mode="json")
    problem = check.check("governor.kill", (fresh,), NOW + 61_000)[1]
    assert problem is not None and problem.startswith("stale: issued 61.0 s")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "expected one JSON object"),
        (("text",), "expected one JSON object"),
        (({"issuer": "x"},), "malformed: issued_at_ms: Field required"),
        (({"issuer": "x", "issued_at_ms": 1, "nonce": "short"},), "nonce"),
        (({"issuer": "x", "issued_at_ms": 1, "nonce": "n" * 8, "mode": "explode"},), "mode"),
    ],
)
def test_malformed_messages_name_the_problem(args: tuple[Any, ...], expected: str) -> None:
    _, problem = checker().check("governor.kill", args, NOW)
    assert problem is not None and expected in problem
