"""Rewriting OpenAI-style activity arguments for a degradation decision (no server needed)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel

from temporal_governor.activity import Degradation
from temporal_governor.core.degradation import rewrite_arguments

DECISION = Degradation(rule=0, reason="low budget", model_map={"big": "small"}, max_tokens=64)


class Request(BaseModel):
    model: str
    max_tokens: int = 1000


class Strict(BaseModel):
    model: Literal["big"]


@dataclasses.dataclass
class Call:
    model: str
    max_completion_tokens: float


@dataclasses.dataclass
class WithInit:
    model: str
    seed: dataclasses.InitVar[int]

    def __post_init__(self, seed: int) -> None:
        self.seeded = seed


def test_requests_are_downgraded_and_capped() -> None:
    [d, m, c] = rewrite_arguments(
        [{"model": "big", "max_tokens": 500}, Request(model="big"), Call("big", 4000.0)],
        DECISION,
    )
    assert d == {"model": "small", "max_tokens": 64}
    assert m == Request(model="small", max_tokens=64)
    assert c == Call("small", 64)


def test_nothing_is_added_and_unrelated_arguments_are_untouched() -> None:
    responses_api = {"model": "o3-mini", "input": "hi"}
    crm = {"model": "Opportunity", "id": 7}
    assert rewrite_arguments([responses_api, crm, "text", 3], DECISION) == [
        responses_api,
        crm,
        "text",
        3,
    ]
    assert rewrite_arguments([{"model": 3, "max_tokens": 900}], DECISION) == [
        {"model": 3, "max_tokens": 900}
    ]


def test_an_argument_that_cannot_be_rebuilt_is_left_as_it_was() -> None:
    strict = Strict(model="big")
    assert rewrite_arguments([strict], DECISION) == [strict]  # "small" is not a valid model
    init = WithInit("big", 1)
    assert rewrite_arguments([init], DECISION)[0] is init  # replace() needs the InitVar
