"""Which of the governor's command sets a run's history was made with (Temporal patching).

A run is governed for its whole life or not at all, and keeps the command set it began
with wherever it is replayed:

- every run the governor takes on records the patch marker :data:`GOVERNED_PATCH` before
  its first command; a run replayed without it began without the governor (on a plain
  worker, or while new runs were switched off) and is executed plain for its whole life,
  so its history replays and continues under a governed worker exactly as it was made;
- runs begun under the previous release (0.1.0, commit e570692) carry no marker either;
  a worker told so (``unmarked_runs="governed"``) governs them with that release's
  commands, and such a run takes each change made since (:data:`CHANGES`) only through
  the change's own patch id, recorded the first time it reaches the change live;
- a change to the governor's commands made after runs began recording the marker is in
  :data:`LATER_CHANGES`: every governed run takes it only through its own patch id
  (``temporal-governor/<change>-v<n>``), runs recorded with the marker before the change
  included, so their histories keep the commands they were made with.

See docs/upgrading.md.
"""

from __future__ import annotations

from typing import Literal

import temporalio.workflow

from ..context import HEADER, read_context

GOVERNED_PATCH = "temporal-governor"
"""The patch id every governed run records before its first command."""

CANCEL_PATCH = "temporal-governor/cancel-to-agent-v1"
"""A cancellation of the run is handed to agent code, which ends; then the run settles."""
HALT_PATCH = "temporal-governor/halt-grace-v1"
"""A halted run lets its in-flight activities finish (a timer) and waits for its children
before it fails; a dispatch that finds the run halted after its ledger call never starts."""
CLOSE_CHILDREN_PATCH = "temporal-governor/close-children-v1"
"""Children under ``TERMINATE`` still running when their parent ends are cancelled and
waited for (a timer)."""
LEASE_LOCK_PATCH = "temporal-governor/lease-lock-v1"
"""Parallel dispatches take or renew a shared lease one at a time (fewer ledger calls)."""
RENEW_PATCH = "temporal-governor/renew-v1"
"""A keeper timer renews the run's open reservations every half TTL (``extend``)."""
RELEASE_RUN_PATCH = "temporal-governor/release-run-v1"
"""The run's end settles every lease and reservation in one ``release_run`` call."""
ONE_LEDGER_CALL_PATCH = "temporal-governor/one-ledger-call-v1"
"""A run has one ledger call in flight at a time (concurrent local activities do not
replay in the order they resolved live)."""

CHANGES = (
    CANCEL_PATCH,
    HALT_PATCH,
    CLOSE_CHILDREN_PATCH,
    LEASE_LOCK_PATCH,
    RENEW_PATCH,
    RELEASE_RUN_PATCH,
    ONE_LEDGER_CALL_PATCH,
)
"""The changes to the governor's commands since the previous release, in patch ids."""

KEY_ON_ASK_PATCH = "temporal-governor/key-on-ask-v1"
"""An activity dispatch takes its key (``activity:<n>:<type>``) when agent code asks for it,
so the guards' records about it (loop, throttle, risk tier) carry it. Before, the key was
taken when the dispatch was reserved, after its throttle, pause or backpressure wait; a
run's keys are also its ledger keys and update ids, so a run recorded before keeps that
numbering. Asked for (and recorded) at a run's first activity dispatch."""

RELEASE_WAITERS_PATCH = "temporal-governor/release-waiters-v1"
"""A run that holds nothing in the ledger but was refused a reservation that waits
(``on_refusal: wait``) sends ``release_run`` at its end, so the ledger drops its waiters at
once. Before, such a run sent nothing at its end (its waiters went stale in seconds). Asked
for (and recorded) at the end of such a run only."""

RELEASE_CALLED_PATCH = "temporal-governor/release-called-v1"
"""A run that made a reservation in a ledger sends ``release_run`` there at its end even
when it believes it holds nothing there. A reservation can be granted to an attempt of
the run whose answer was never recorded (its worker killed mid-task) and not made again
by the run's re-execution, which may take another path (a shard's pool that was dry is
filled by then): only ``release_run`` reaches it. Asked for (and recorded) at the end of
such a run only."""

LATER_CHANGES = (KEY_ON_ASK_PATCH, RELEASE_WAITERS_PATCH, RELEASE_CALLED_PATCH)
"""Changes made after runs began recording :data:`GOVERNED_PATCH`, in patch ids: histories
with the marker exist without them, so every governed run takes them only through their
own patch (new runs record it)."""

UnmarkedRuns = Literal["plain", "governed"]
"""What a history without the :data:`GOVERNED_PATCH` marker is: a run that began without the
governor (``plain``), or one the previous release governed (``governed``)."""

Lineage = Literal["current", "previous"]
"""The command set a governed run was made with: this release's or the previous one's."""


def lineage(govern_new_runs: bool, unmarked_runs: UnmarkedRuns) -> Lineage | None:
    """Whether the run starting to execute is governed, and with which command set.

    Call it in workflow code before the run's first command. A run replayed from its
    beginning keeps what its history says (the :data:`GOVERNED_PATCH` marker, or none); a
    brand-new run is governed when new runs are (the marker is recorded now), or when a
    governed parent started it (so a governed tree stays whole while new runs are
    switched off).

    Returns:
        ``None`` for a run executed plain.
    """
    if temporalio.workflow.unsafe.is_replaying():
        if temporalio.workflow.patched(GOVERNED_PATCH):
            return "current"
        return "previous" if unmarked_runs == "governed" else None
    if (govern_new_runs or _started_by_governed_parent()) and temporalio.workflow.patched(
        GOVERNED_PATCH
    ):
        return "current"
    return None


def _started_by_governed_parent() -> bool:
    """Whether the run's start header was written by the parent that started it.

    Only a governed worker writes a chain whose last link is the run's parent (the server
    says who the parent is, no client can forge it).
    """
    info = temporalio.workflow.info()
    payload = info.headers.get(HEADER)
    if info.parent is None or payload is None:
        return False
    context, _ = read_context(payload.data)
    if context is None or not context.chain:
        return False
    last = context.chain[-1]
    return last.workflow_id == info.parent.workflow_id and last.run_id == info.parent.run_id


class Commands:
    """The command set of one governed run: which changed paths it takes."""

    def __init__(self, lineage: Lineage = "current") -> None:
        self.lineage: Lineage = lineage
        self._taken: dict[str, bool] = {}
        """The answer of each patch asked for (the SDK keeps the first answer too)."""

    @property
    def previous(self) -> bool:
        """The run began under the previous release (no :data:`GOVERNED_PATCH` marker)."""
        return self.lineage == "previous"

    def since(self, change: str) -> bool:
        """Whether the run takes the path a change introduced.

        For a change since the previous release (:data:`CHANGES`), a run of this release
        always does. Otherwise (a run of the previous release, or a change in
        :data:`LATER_CHANGES`) the run does when its history has the change's marker, or
        when it reaches the change live (the marker is recorded then). The first answer
        holds for the rest of the run.
        """
        if self.lineage == "current" and change not in LATER_CHANGES:
            return True
        taken = self._taken.get(change)
        if taken is None:
            taken = self._taken[change] = temporalio.workflow.patched(change)
        return taken
