"""The pure decision core: every budget, lease, control and detector decision.

Nothing in this package imports ``temporalio``; the interceptors (the glue) ask it what to
do and turn its answers into Temporal commands. Its modules, by job:

- :mod:`.accounting`: reserve, commit and release against a run's limits.
- :mod:`.carving`: children's allowances carved out of what a run has left; max depth.
- :mod:`.deadlines`: which wall-time deadline binds a run, and whether it has passed.
- :mod:`.book`: the shared ledger's arithmetic (windows, slots, leases), packed for
  continue-as-new.
- :mod:`.scopes`: which shared scopes a dispatch reserves against.
- :mod:`.detectors`: loops, spend anomalies, token buckets.
- :mod:`.degradation`: decisions short of a halt (throttle, downgrade, cap tokens).
- :mod:`.decisions`: the dispatch a decision is about, and the records every decision
  leaves for audit.
- :mod:`.problems`: the root of the governor's errors and the policy's problems.
"""

__all__: list[str] = []
