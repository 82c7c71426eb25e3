"""Which ledger keeps which shared scope (core.shards): pure, no server."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from temporal_governor.core.scopes import SharedLimit
from temporal_governor.core.shards import MAX_SHARDS, ShardMap, shard_of, tenant_of_scope

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


def limit(scope: str, resource: str = "tokens") -> SharedLimit:
    return SharedLimit(name=f"x.{scope}", scope=scope, resource=resource, ceiling=10)  # type: ignore[arg-type]


def test_one_shard_keeps_everything_on_the_root() -> None:
    ledgers = ShardMap("ledger")
    assert not ledgers.sharded
    assert ledgers.all_ledgers() == ["ledger"]
    for scope in ("global", "tenant:acme", "owner:acme/alice", "agent:Planner", "tool:search"):
        assert ledgers.ledger_of_scope(scope) == "ledger"


@given(tenant=names, owner=names, shards=st.integers(2, MAX_SHARDS))
def test_a_tenant_and_its_owners_share_one_shard_and_fleet_scopes_stay_on_the_root(
    tenant: str, owner: str, shards: int
) -> None:
    ledgers = ShardMap("ledger", shards)
    shard = ledgers.ledger_of_scope(f"tenant:{tenant}")
    assert shard == f"ledger-shard-{shard_of(tenant, shards)}-of-{shards}"
    owned = [limit(f"tenant:{tenant}"), limit(f"owner:{tenant}/{owner}")]
    assert ledgers.split(owned, tenant) == {shard: owned}
    if "/" not in tenant:  # else the owner scope's name alone is ambiguous
        assert ledgers.ledger_of_scope(f"owner:{tenant}/{owner}") == shard
    assert shard in ledgers.all_ledgers() and shard != ledgers.root
    for scope in ("global", f"agent:{tenant}", f"tool:{tenant}"):
        assert ledgers.ledger_of_scope(scope) == "ledger"


@given(tenant=names, owner=names)
def test_the_tenant_of_a_scope(tenant: str, owner: str) -> None:
    assert tenant_of_scope(f"tenant:{tenant}") == tenant
    if "/" not in tenant:
        assert tenant_of_scope(f"owner:{tenant}/{owner}") == tenant
    assert tenant_of_scope("global") is None
    assert tenant_of_scope(f"agent:{tenant}") is None


def test_a_dispatch_splits_into_its_tenant_shard_first_and_the_root_last() -> None:
    ledgers = ShardMap("ledger", 4)
    limits = [
        limit("global"),
        limit("tenant:acme"),
        limit("owner:acme/alice"),
        limit("tool:search", "concurrency"),
    ]
    split = ledgers.split(limits)
    shard = ledgers.ledger_of_tenant("acme")
    assert list(split) == [shard, "ledger"]
    assert split[shard] == [limits[1], limits[2]]
    assert split["ledger"] == [limits[0], limits[3]]
    assert ledgers.split([limits[1]]) == {shard: [limits[1]]}
    assert ledgers.split([]) == {}
    assert ledgers.split_scopes(["agent:Planner", "tenant:acme"]) == {
        shard: ["tenant:acme"],
        "ledger": ["agent:Planner"],
    }


def test_routing_is_the_same_in_every_process() -> None:
    """Workers of a fleet run in many processes: the hash must not be Python's ``hash()``."""
    tenants = [f"tenant-{i}" for i in range(50)]
    here = [shard_of(t, 8) for t in tenants]
    code = (
        "from temporal_governor.core.shards import shard_of;"
        f"print([shard_of(t, 8) for t in {tenants!r}])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        assert out.strip() == str(here)


def test_ten_thousand_tenants_spread_evenly_over_eight_shards() -> None:
    counts = collections.Counter(shard_of(f"tenant-{i}", 8) for i in range(10_000))
    assert sorted(counts) == list(range(8))
    assert max(counts.values()) < 1.1 * 10_000 / 8  # within 10 % of an even share


@pytest.mark.parametrize("shards", [0, MAX_SHARDS + 1])
def test_a_shard_count_out_of_range_is_refused(shards: int) -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        ShardMap("ledger", shards)
