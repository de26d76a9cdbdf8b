"""The one level-driven reconcile of an EdgeModel: observe -> decide -> act.

* ``observe`` reads an immutable :class:`decide.Snapshot` (the EdgeModel, the fleet as typed views,
  and, when the decision asks, the conversion Job, Prometheus' numbers and a revision's split plan);
* ``decide`` is a pure function from the snapshot to a :class:`decide.Decision` (status, Job, events,
  EdgeAgent entries, metrics, requeue), unit-tested without any I/O;
* ``act`` applies it with the one Kubernetes client.

The reconciler holds no state between calls: caches (split plans, the fleet) live in the runtime.
"""

from __future__ import annotations

import time

from edgemodel_operator import act, observe
from edgemodel_operator.act import Outcome
from edgemodel_operator.decide import Decision, decide
from edgemodel_operator.runtime import Runtime

__all__ = ["Outcome", "Reconciler"]

MAX_OBSERVE_ROUNDS = 4
"""decide may ask for the Job, the analysis numbers and the split plan: at most one round each."""


class Reconciler:
    """Reconciles EdgeModels with the runtime's clients and caches; cheap to build, stateless between calls."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        """Bring one EdgeModel one step closer to its spec; safe to call any time, any number of times."""
        started = time.monotonic()
        result = "error"
        try:
            async with self.rt.lock((namespace, name)):
                outcome = await self._reconcile(namespace, name)
            result = "invalid" if outcome.invalid else "ok"
            return outcome
        finally:
            self.rt.metrics.reconcile_duration.labels(result=result).observe(time.monotonic() - started)

    async def _reconcile(self, namespace: str, name: str) -> Outcome:
        snap = await observe.snapshot(self.rt, namespace, name)
        if snap is None:
            return Outcome(None)
        decision: Decision = decide(snap, self.rt.settings)
        for _ in range(MAX_OBSERVE_ROUNDS):
            if not decision.wants:
                break
            snap = await observe.more(self.rt, snap, decision.wants)
            decision = decide(snap, self.rt.settings)
        if decision.wants:  # a fact that could not be observed: decide never loops on one it has
            raise RuntimeError(f"the decision on EdgeModel {namespace}/{name} still wants {decision.wants} after "
                               f"{MAX_OBSERVE_ROUNDS} observations")
        return await act.act(self.rt, snap.body, decision)

    async def unassign_everywhere(self, namespace: str, name: str) -> list[str]:
        """Remove the model from every EdgeAgent (read fresh from the API); returns agents still holding it."""
        async with self.rt.lock((namespace, name)):
            return await act.unassign_everywhere(self.rt, namespace, name)

    async def delete_artifacts(self, namespace: str, name: str, revisions: list[int]) -> list[int]:
        """Delete revision folders from the store (retention); returns the revisions that could not be deleted."""
        return await act.delete_artifacts(self.rt, namespace, name, revisions)
