"""SecAgg+ (flwr 1.42's SecAggPlusWorkflow) that tolerates nodes dying before the share-keys stage.

flwr 1.42 keeps every *sampled* node in ``sampled_node_ids`` and in the neighbour sets for the whole
round. A node that dies before share-keys never distributed key shares and nobody masked with it (the
clients mask only with neighbours whose shares they received), yet the unmask stage treats it as a
dropout to unmask and needs its shares: "Not enough shares to recover secret in unmask vectors stage",
round halted. ``SurvivorsOnly`` restricts the sampled set and the neighbourhoods to the nodes that
finished share-keys (the SecAgg+ paper's U2) right after that stage; the protocol itself (keys, shares,
masks, unmasking) stays Flower's. The secure-aggregation server (``grid_server``) runs it.
"""

from __future__ import annotations

from typing import Any

from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid


class SurvivorsOnly(SecAggPlusWorkflow):
    """SecAggPlusWorkflow whose later stages only account for the share-keys survivors."""

    def share_keys_stage(self, grid: Grid, context: Any, state: Any) -> bool:
        ok = bool(super().share_keys_stage(grid, context, state))
        alive = set(state.active_node_ids)
        state.sampled_node_ids = alive
        state.nid_to_neighbours = {n: nb & alive for n, nb in state.nid_to_neighbours.items() if n in alive}
        return ok
