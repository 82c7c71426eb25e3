"""Which ledger keeps which shared scope: the fleet's shards, pure, no Temporal.

With ``shared.shards: 1`` (the default) one ledger workflow (``shared.ledger_id``) keeps
every shared scope. With ``N > 1`` the scopes of a tenant (``tenant:<t>`` and its owners,
``owner:<t>/<o>``) live on one of N shard ledgers, chosen by a stable hash of the tenant's
name, and the fleet-wide scopes (``global``, ``agent:<type>``, ``tool:<name>``) stay on the
root ledger, whose id is ``shared.ledger_id``. So everything one dispatch reserves for
its tenant is on one shard and stays all-or-nothing there; the fleet-wide part of a
dispatch is a second reservation, on the root.

The shard's ledger id carries the shard count (``<ledger_id>-shard-<i>-of-<N>``): a fleet
whose policy changes ``N`` never reads a shard of another count as if it were its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..policy import MAX_SHARDS

TENANT_PREFIXES = ("tenant:", "owner:")
"""Scopes that belong to one tenant and live on that tenant's shard."""


class _Scoped(Protocol):
    @property
    def scope(self) -> str: ...


_Limit = TypeVar("_Limit", bound=_Scoped)


def tenant_of_scope(scope: str) -> str | None:
    """The tenant a scope belongs to (``tenant:<t>``, ``owner:<t>/<o>``), else ``None``.

    An owner scope is read up to its first ``/``: a tenant whose name holds one is found
    by :meth:`ShardMap.split` from the dispatch's tenant instead.
    """
    if scope.startswith("tenant:"):
        return scope[len("tenant:") :]
    if scope.startswith("owner:"):
        tenant, _, _ = scope[len("owner:") :].partition("/")
        return tenant
    return None


def shard_of(tenant: str, shards: int) -> int:
    """The shard (``0 .. shards - 1``) of a tenant: a stable hash of its name.

    Stable across processes and Python versions (BLAKE2b, not ``hash()``), so every
    worker of a fleet routes a tenant to the same shard.
    """
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class ShardMap:
    """The ledgers of a fleet: the root (fleet-wide scopes) and its tenant shards."""

    root: str
    """The root ledger's workflow id (``shared.ledger_id``)."""
    shards: int = 1
    """How many ledgers keep tenant scopes (1: the root keeps everything)."""

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, not {self.shards}")

    @property
    def sharded(self) -> bool:
        """Whether tenant scopes live on shard ledgers apart from the root."""
        return self.shards > 1

    def shard_id(self, index: int) -> str:
        """The workflow id of shard ``index``."""
        return f"{self.root}-shard-{index}-of-{self.shards}"

    def all_ledgers(self) -> list[str]:
        """Every ledger of the fleet, shards first (in index order), the root last."""
        if not self.sharded:
            return [self.root]
        return [self.shard_id(i) for i in range(self.shards)] + [self.root]

    def ledger_of_tenant(self, tenant: str) -> str:
        """The ledger that keeps a tenant's scopes."""
        if not self.sharded:
            return self.root
        return self.shard_id(shard_of(tenant, self.shards))

    def ledger_of_scope(self, scope: str) -> str:
        """The ledger that keeps a scope: its tenant's shard, or the root."""
        tenant = tenant_of_scope(scope)
        return self.root if tenant is None else self.ledger_of_tenant(tenant)

    def split(self, limits: Iterable[_Limit], tenant: str | None = None) -> dict[str, list[_Limit]]:
        """Limits (anything with a ``scope``) grouped by the ledger keeping their scope.

        Tenant shards come before the root, each group in the order of ``limits``;
        ledgers with nothing are left out. With ``tenant`` (the dispatch's), every tenant
        and owner scope goes to that tenant's shard: an owner scope's name alone is
        ambiguous when the tenant's name holds a ``/``.
        """
        grouped: dict[str, list[_Limit]] = {}
        for limit in limits:
            if tenant is not None and limit.scope.startswith(TENANT_PREFIXES):
                ledger = self.ledger_of_tenant(tenant)
            else:
                ledger = self.ledger_of_scope(limit.scope)
            grouped.setdefault(ledger, []).append(limit)
        return dict(sorted(grouped.items(), key=lambda kv: kv[0] == self.root))

    def split_scopes(self, scopes: Iterable[str]) -> dict[str, list[str]]:
        """Scope names grouped by the ledger keeping them (tenant shards before the root)."""
        grouped: dict[str, list[str]] = {}
        for scope in scopes:
            grouped.setdefault(self.ledger_of_scope(scope), []).append(scope)
        return dict(sorted(grouped.items(), key=lambda kv: kv[0] == self.root))


__all__ = ["MAX_SHARDS", "TENANT_PREFIXES", "ShardMap", "shard_of", "tenant_of_scope"]
