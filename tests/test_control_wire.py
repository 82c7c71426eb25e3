"""Control messages on the wire: the governor decodes them itself, and their size is capped.

A payload the SDK could not decode (invalid JSON, an unknown encoding) or one above
``MAX_CONTROL_BYTES`` is rejected and audited like any other bad message, and the run goes
on; ``ControlClient`` and relaying runs refuse to send a message above the cap.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue
from temporalio.converter import DataConverter

from conftest import CONTROL_KEY_ID, CONTROL_SECRET, eventually
from control_wire_workflows import LONG_SUFFIX, LongChildParent
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Fanner, Loop
from temporal_governor import Policy
from temporal_governor.control import (
    CONTROL_QUERY,
    BackpressureMessage,
    ControlClient,
    ControlError,
    ControlMessage,
    ControlTarget,
    Keyring,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
    decode_payload,
    encode_message,
)
from temporal_governor.control._messages import MAX_CONTROL_BYTES, ControlCheck
from temporal_governor.workflow import BUDGET_QUERY

POLICY = Policy.from_dict({"tools": {"step": {"estimate": {"tokens": 50}}}})
WORKFLOWS = [*CONTROL_WORKFLOWS, LongChildParent]
KEYS = Keyring({CONTROL_KEY_ID: CONTROL_SECRET.encode()})
NOW = 1_800_000_000_000
EMOJI = "\N{GRINNING FACE}"
"""One character of a message, twelve bytes on the wire (``\\ud83d\\ude00``)."""


def json_payload(data: bytes, encoding: bytes | None = b"json/plain") -> Payload:
    return Payload(metadata={} if encoding is None else {"encoding": encoding}, data=data)


def kill_fields(workflow_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "issuer": "mallory",
        "workflow_id": workflow_id,
        "issued_at_ms": kw.pop("issued_at_ms", int(time.time() * 1000)),
        "nonce": uuid.uuid4().hex,
        **kw,
    }


# -- decoding, without a server ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (json_payload(b'{"issuer": "x", "issued_at_ms": '), "undecodable: invalid JSON"),
        (json_payload(b"\x00\x01", b"binary/x-test"), "undecodable: encoding 'binary/x-test'"),
        (json_payload(b'{"issuer": "x"}', None), "undecodable: encoding none"),
        (json_payload(b'{"issuer": "\xff"}'), "undecodable: not UTF-8"),
        (json_payload(b'{"issued_at_ms": NaN}'), "NaN is not JSON"),
        (json_payload(b'{"value": -Infinity}'), "-Infinity is not JSON"),
        (json_payload(b'{"issued_at_ms": ' + b"9" * 21 + b"}"), "21 digits"),
        (json_payload(b'{"value": 1e999}'), "1e999 is out of range"),
        (json_payload(b"[" * 5_000 + b"]" * 5_000), "undecodable: JSON nested deeper than 32"),
        (json_payload(b"[" * 33 + b"]" * 33), "undecodable: JSON nested deeper than 32"),
        # the size is judged before anything else: no parsing of what is too large
        (json_payload(b"x" * MAX_CONTROL_BYTES, b"binary/x-test"), "oversized: "),
    ],
)
def test_payloads_the_sdk_would_drop_are_named_problems(payload: Payload, expected: str) -> None:
    value, problem = decode_payload(payload)
    assert value is None and problem is not None and expected in problem, problem


def test_brackets_in_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"reason": "[{" * 500, "nested": [[["ok"]]]}).encode()
    assert decode_payload(json_payload(text)) == (json.loads(text), None)
    assert decode_payload(json_payload(b"[" * 32 + b"]" * 32))[1] is None


def test_the_cap_is_on_the_payload_as_received_to_the_byte() -> None:
    def padded(size: int) -> Payload:
        data = b'{"issuer":"x"}'
        payload = json_payload(data)
        while payload.ByteSize() < size:
            payload = json_payload(data + b" " * (len(payload.data) - len(data) + 1))
        assert payload.ByteSize() == size
        return payload

    assert decode_payload(padded(MAX_CONTROL_BYTES)) == ({"issuer": "x"}, None)
    value, problem = decode_payload(padded(MAX_CONTROL_BYTES + 1))
    assert value is None
    assert problem == (
        f"oversized: {MAX_CONTROL_BYTES + 1} bytes, above the {MAX_CONTROL_BYTES}-byte cap "
        "on control messages"
    )


def test_the_governor_writes_what_the_default_converter_writes() -> None:
    message = KEYS.sign(KillMessage(**kill_fields("wf-1", reason=f"caf\u00e9 {EMOJI}")))
    [expected] = DataConverter.default.payload_converter.to_payloads(
        [message.model_dump(mode="json")]
    )
    assert encode_message(message) == expected
    assert decode_payload(expected) == (message.model_dump(mode="json"), None)


def largest(model: type[ControlMessage], **kw: Any) -> ControlMessage:
    """A message of ``model`` with every text field at its length limit (ASCII)."""
    fields: dict[str, Any] = {
        "issuer": "i" * 200,
        "reason": "r" * 2000,
        "target": "tenant",
        "workflow_id": "w" * 1000,
        "tenant": "t" * 200,
        "agent": "a" * 200,
        "issued_at_ms": NOW,
        "nonce": "n" * 128,
        **kw,
    }
    return KEYS.sign(model(**fields)).model_copy(update={"key_id": "k" * 200, "relay": "down"})


@pytest.mark.parametrize(
    "message",
    [
        largest(KillMessage, mode="terminate"),
        largest(ResumeMessage),
        largest(BackpressureMessage, source="s" * 200, max_concurrency=10**6),
        largest(OverrideMessage, limit="l" * 100, value=1.0e300),
    ],
    ids=["kill", "resume", "backpressure", "override"],
)
def test_a_message_at_every_length_limit_fits_under_the_cap(message: ControlMessage) -> None:
    size = encode_message(message).ByteSize()
    assert size <= MAX_CONTROL_BYTES, size


def test_the_check_decodes_raw_payloads_itself() -> None:
    policy = Policy.from_dict({"control": {"allow_unsigned_kill": False}})
    check = ControlCheck(KEYS, policy.control)
    signed = KEYS.sign(KillMessage(**kill_fields("wf-1", issued_at_ms=NOW)))
    assert check.check("governor.kill", (RawValue(encode_message(signed)),), NOW) == (signed, None)
    garbage = RawValue(json_payload(b"{oops"))
    message, problem = check.check("governor.kill", (garbage,), NOW)
    assert message is None and problem is not None and problem.startswith("undecodable: ")
    two = (RawValue(encode_message(signed)),) * 2
    assert check.check("governor.kill", two, NOW)[1] == (
        "malformed: expected one JSON object as the signal's argument, got 2 arguments"
    )


# -- on the dev server -------------------------------------------------------------------


async def audit(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    return await handle.query(CONTROL_QUERY)  # type: ignore[no-any-return]


async def audited(handle: WorkflowHandle[Any, Any], records: int) -> bool:
    try:
        return len((await audit(handle))["audit"]) >= records
    except Exception:
        return False  # its first workflow task has not run yet


async def signals_in_history(handle: WorkflowHandle[Any, Any], name: str) -> list[Any]:
    return [
        e.workflow_execution_signaled_event_attributes
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == name
    ]


async def scheduled(handle: WorkflowHandle[Any, Any]) -> int:
    return len(
        [
            e
            async for e in handle.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
    )


async def test_undecodable_and_oversized_signals_are_rejected_audited_and_the_run_goes_on(
    governed, env
) -> None:
    async with governed(POLICY, WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Fanner.run, Loop(steps=3))
        plain = Client(env.client.service_client, namespace=env.client.namespace)  # no plugin
        raw = plain.get_workflow_handle(handle.id)
        # an unsigned kill the run would accept (it is for this run, fresh, well formed) if it
        # were not padded with 1.5 MB of JSON whitespace
        valid_kill = json.dumps(kill_fields(handle.id)).encode()
        huge = json_payload(valid_kill + b" " * 1_500_000)
        attempts: list[tuple[list[Any], str]] = [
            (
                [RawValue(json_payload(b'{"issuer": "mallory", "issued_'))],
                "undecodable: invalid JSON",
            ),
            ([RawValue(json_payload(b"\x00\x01", b"binary/x-test"))], "undecodable: encoding"),
            ([RawValue(json_payload(valid_kill, None))], "undecodable: encoding none"),
            ([RawValue(json_payload(b'{"issuer": "\xff\xfe"}'))], "undecodable: not UTF-8"),
            ([RawValue(huge)], f"oversized: {huge.ByteSize()} bytes"),
            ([kill_fields(handle.id), kill_fields(handle.id)], "got 2 arguments"),
            ([], "got 0 arguments"),
        ]
        for args, _ in attempts:
            await raw.signal("governor.kill", args=args)
        await eventually(lambda: audited(handle, len(attempts)))

        status = await audit(handle)
        assert status["state"] == "running", "a rejected kill paused the run"
        assert status["accepted"] == 0 and status["rejected"] == len(attempts)
        for record, (_, why) in zip(status["audit"], attempts, strict=True):
            assert record["signal"] == "governor.kill" and not record["accepted"], record
            assert why in record["outcome"], record
        budget = await handle.query(BUDGET_QUERY)
        rejected = [e for e in budget["recent_events"] if e["kind"] == "control_rejected"]
        assert len(rejected) == len(attempts)
        # a plain client's signal is in history all the same: the cap cannot prevent that
        sizes = [s.input.ByteSize() for s in await signals_in_history(handle, "governor.kill")]
        assert len(sizes) == len(attempts) and max(sizes) > 1_500_000

        # a valid signed kill still works, and the run finishes normally after the resume
        control = ControlClient(g.client, POLICY, issuer="oncall@test")
        await control.kill(ControlTarget.run(handle.id), reason="hold")
        await eventually(lambda: _state_is(handle, "paused"))
        await handle.signal(Fanner.start_now)
        await asyncio.sleep(0.5)
        assert await scheduled(handle) == 0, "dispatched while paused"
        await control.resume(ControlTarget.run(handle.id), reason="go on")
        assert await handle.result() == 30
        kill, resume = (await audit(handle))["audit"][len(attempts) :]
        assert kill["accepted"] and kill["outcome"].startswith("paused"), kill
        assert resume["accepted"] and resume["outcome"] == "resumed", resume


async def _state_is(handle: WorkflowHandle[Any, Any], state: str) -> bool:
    return bool((await audit(handle))["state"] == state)


async def test_control_client_refuses_a_message_above_the_cap_before_it_costs_history(
    governed,
) -> None:
    async with governed(POLICY, WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Fanner.run, Loop(steps=2))
        await eventually(lambda: audited(handle, 0))
        control = ControlClient(g.client, POLICY, issuer="oncall@test")
        # within the model's 2,000 characters, but 12 bytes a character on the wire
        with pytest.raises(ControlError) as refused:
            await control.kill(ControlTarget.run(handle.id), reason=EMOJI * 2000)
        text = str(refused.value)
        assert text.startswith("kill not sent: it is ") and "MAX_CONTROL_BYTES" in text, text
        assert f"above the {MAX_CONTROL_BYTES}-byte cap" in text, text
        # nor one the run would not decode (it would reject it unread)
        with pytest.raises(ControlError, match=r"^backpressure not sent: undecodable: .*26 digits"):
            await control.backpressure(ControlTarget.run(handle.id), max_concurrency=10**25)
        assert await signals_in_history(handle, "governor.kill") == []
        assert await signals_in_history(handle, "governor.backpressure") == []

        await handle.signal(Fanner.start_now)
        assert await handle.result() == 20
        status = await audit(handle)
        assert status["state"] == "running" and status["audit"] == []


async def test_a_relayed_message_above_the_cap_is_not_sent_and_is_audited(governed) -> None:
    async with governed(POLICY, WORKFLOWS, CONTROL_ACTIVITIES) as g:
        parent = await g.start(LongChildParent.run, Loop(steps=2), id=f"p-{uuid.uuid4().hex[:8]}")
        child = g.client.get_workflow_handle(f"{parent.id}{LONG_SUFFIX}")
        await eventually(lambda: audited(child, 0))
        await eventually(lambda: _child_known(parent))

        # a tree pause just under the cap: relayed to the child, whose id is 900 characters
        # longer, it would be above it
        control = ControlClient(g.client, POLICY, issuer="oncall@test")
        target = ControlTarget.tree(parent.id)
        base = encode_message(
            KEYS.sign(KillMessage(**target.fields(), **_probe_fields(control)))
        ).ByteSize()
        emojis, ascii_ = divmod(MAX_CONTROL_BYTES - 300 - base, 12)
        sent = await control.kill(target, reason=EMOJI * emojis + "a" * ascii_)
        size = encode_message(sent.message).ByteSize()
        assert MAX_CONTROL_BYTES - 400 < size <= MAX_CONTROL_BYTES, size

        await eventually(lambda: audited(parent, 2))
        records = (await audit(parent))["audit"]
        [paused] = [r for r in records if r["accepted"]]
        [refused] = [r for r in records if not r["accepted"]]
        assert paused["accepted"] and paused["outcome"].startswith("paused"), paused
        assert not refused["accepted"], refused
        assert refused["outcome"].startswith(f"not relayed down to {child.id}: oversized: ")
        assert await signals_in_history(child, "governor.kill") == []
        assert (await audit(child))["state"] == "running"

        await control.resume(target, reason="go on")
        await eventually(lambda: _state_is(parent, "running"))
        await child.signal(Fanner.start_now)
        assert await parent.result() == 20


def _probe_fields(control: ControlClient) -> dict[str, Any]:
    """The fields ControlClient adds, with values of the same lengths it uses."""
    return {"issuer": control.issuer, "issued_at_ms": int(time.time() * 1000), "nonce": "n" * 32}


async def _child_known(parent: WorkflowHandle[Any, Any]) -> bool:
    """Whether the parent has run a workflow task after its child started."""
    started = False
    async for e in parent.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            started = True
        elif started and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return True
    return False
