"""``flower-supernode`` with its idle poll shortened from 3 s to 0.1 s (probe only, flwr 1.42).

flwr 1.42's SuperNode sleeps a hard-coded 3 s whenever the SuperLink has no message for it, so every
SecAgg+ stage waits up to 3 s per node. This entry point swaps the ``time`` module seen by
``flwr.supernode.start_client_internal`` for one whose ``sleep`` is capped at 0.1 s, then runs the
unchanged ``flower-supernode`` CLI. Measures what the polling costs; not a product path.
"""

from __future__ import annotations

import time as _time
import types

import flwr.supernode.start_client_internal as sci
from flwr.supernode.cli.flower_supernode import flower_supernode

sci.time = types.SimpleNamespace(  # type: ignore[assignment]
    time=_time.time, monotonic=_time.monotonic, sleep=lambda s: _time.sleep(min(s, 0.1))
)

if __name__ == "__main__":
    flower_supernode()
