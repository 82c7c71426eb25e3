"""The usage marker, whatever the payload converter, and what its registry keeps alive.

- The marker is a ``json/plain`` payload (tagged in its metadata): a client whose payload
  converter has no protobuf converter (a JSON-only composite) decodes the heartbeat details
  a retried attempt starts from, and the run is charged every attempt.
- A built-in exception registered to carry usage is not kept alive by the registry: its
  traceback's frames (and their locals, prompts among them) go when the exception does.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import uuid
import weakref
from collections.abc import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.converter import (
    BinaryNullPayloadConverter,
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    JSONPlainPayloadConverter,
    PayloadCodec,
)
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from conftest import RECORDED, Recorded
from marker_workflows import ACTIVITIES, POLICY, WORKFLOWS, RetriedSpender
from temporal_governor import GovernorPlugin, Policy
from temporal_governor.interceptors._failures import (
    carry_usage,
    marker_detail,
    marker_payload,
    take_carried,
)
from temporal_governor.interceptors._wire import read_marker, take_failure_usage
from temporal_governor.names import BUDGET_QUERY
from temporal_governor.plugin import governed_data_converter
from temporal_governor.usage import Usage
from temporal_governor.workflow import BudgetSnapshot


class JsonOnly(CompositePayloadConverter):
    """A payload converter with JSON and null only (no protobuf converters)."""

    def __init__(self) -> None:
        super().__init__(BinaryNullPayloadConverter(), JSONPlainPayloadConverter())


class Base64Codec(PayloadCodec):
    """Wraps every payload (as an encryption codec would)."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": b"binary/wrapped"},
                data=base64.b64encode(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for p in payloads:
            inner = Payload()
            inner.ParseFromString(base64.b64decode(p.data))
            decoded.append(inner)
        return decoded


JSON_ONLY = DataConverter(payload_converter_class=JsonOnly)


# --- the marker with any payload converter -----------------------------------------------


async def test_a_json_only_converter_decodes_the_heartbeat_marker() -> None:
    for base in (JSON_ONLY, dataclasses.replace(JSON_ONLY, payload_codec=Base64Codec())):
        converter = governed_data_converter(base)
        sent = await converter.encode(["user progress", marker_detail(Usage(input_tokens=5))])
        details = await converter.decode(sent)  # as the next attempt receives them
        usage, rest, problem = read_marker(details)
        assert problem is None and rest == ("user progress",)
        assert usage is not None and usage.input_tokens == 5


async def test_the_failure_marker_survives_a_codec_and_encoded_attributes() -> None:
    converter = governed_data_converter(
        dataclasses.replace(
            JSON_ONLY,
            payload_codec=Base64Codec(),
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    )
    error = ApplicationError("boom", {"a": 1}, type="X")
    carry_usage(error, Usage(input_tokens=5))
    failure = Failure()
    await converter.encode_failure(error, failure)
    received = await converter.decode_failure(failure)
    assert isinstance(received, ApplicationError) and list(received.details) == [{"a": 1}]
    usage = take_failure_usage(received)
    assert usage is not None and usage.input_tokens == 5


def test_a_marker_too_large_is_refused_and_taken_off() -> None:
    from temporal_governor.interceptors._failures import MAX_MARKER_BYTES

    converter = governed_data_converter()
    marker = marker_payload(Usage(input_tokens=1))
    marker.data = marker.data[:-2] + b', "pad": "' + b"y" * MAX_MARKER_BYTES + b'"}}'
    failure = Failure()
    converter.failure_converter.to_failure(
        ApplicationError("x", "user detail"), converter.payload_converter, failure
    )
    failure.application_failure_info.details.payloads.append(marker)
    error = converter.failure_converter.from_failure(failure, converter.payload_converter)
    assert isinstance(error, ApplicationError) and list(error.details) == ["user detail"]
    carried = take_carried(error)
    assert carried is not None  # there: the dispatch is charged as unknown
    assert take_failure_usage(error) is None


async def test_retried_attempts_are_charged_with_a_json_only_converter(env) -> None:
    policy = Policy.from_yaml(POLICY)
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        data_converter=JSON_ONLY,
        plugins=[GovernorPlugin(policy, telemetry=False)],
    )
    task_queue = f"json-only-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, WORKFLOWS))
    async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        handle = await client.start_workflow(
            RetriedSpender.run, 2, id=task_queue, task_queue=task_queue
        )
        assert await handle.result() == 3  # the third attempt decoded its heartbeat details
        snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
    assert snapshot.committed["tokens"] == 30  # 10 tokens on each of three attempts


# --- what the registry keeps alive -------------------------------------------------------


class Prompt:
    """Stands for what a frame's locals hold (a prompt)."""


def _raise_with_a_prompt() -> tuple[BaseException, weakref.ref[Prompt]]:
    prompt = Prompt()
    alive = weakref.ref(prompt)
    try:
        raise ValueError(f"the model refused ({id(prompt)})")
    except ValueError as error:
        return error, alive


def test_a_registered_builtin_exception_keeps_no_frame_alive() -> None:
    error, alive = _raise_with_a_prompt()
    assert error.__traceback__ is not None and alive() is not None
    carry_usage(error, Usage(output_tokens=3))  # never converted (a client without it)
    del error
    gc.collect()
    assert alive() is None


def test_a_builtin_exception_is_matched_by_identity_without_being_kept() -> None:
    converter = governed_data_converter()
    error, _ = _raise_with_a_prompt()
    carry_usage(error, Usage(output_tokens=3))
    failure = Failure()
    converter.failure_converter.to_failure(error, converter.payload_converter, failure)
    received = converter.failure_converter.from_failure(failure, converter.payload_converter)
    usage = take_failure_usage(received)
    assert usage is not None and usage.output_tokens == 3
    # another built-in exception born at the same address later is not taken for it
    for _ in range(100):
        first = KeyError("first")
        ident = id(first)
        carry_usage(first, Usage(output_tokens=1))
        del first
        second = KeyError("second")
        if id(second) == ident:
            failure = Failure()
            converter.failure_converter.to_failure(second, converter.payload_converter, failure)
            assert len(failure.application_failure_info.details.payloads) == 0
            return
    raise AssertionError("no address was reused (the check above never ran)")
