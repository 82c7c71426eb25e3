"""The pure decision core: every budget, lease, control and detector decision.

Nothing in this package imports ``temporalio``; the interceptors (the glue) ask it what to
do and turn its answers into Temporal commands. Its modules, by job:

- :mod:`.accounting`: reserve, commit and release against a run's limits; carving.
- :mod:`.book`: the shared ledger's arithmetic (windows, slots, leases), packed for
  continue-as-new.
- :mod:`.scopes`: which shared scopes a dispatch reserves against.
- :mod:`.detectors`: loops, spend anomalies, token buckets.
- :mod:`.degradation`: decisions short of a halt (throttle, downgrade, cap tokens).
- :mod:`.decisions`: the records every decision leaves for audit.
"""

__all__: list[str] = []
