"""observe: the split-plan cache lives in the Runtime, and the store is read through edgemodel.store's client.

The store client is synchronous (urllib): observe runs it in a worker thread. A plan read once is kept
(immutable per revision); one that could not be read is not, so the next reconcile tries again.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from edgemodel.store.client import StoreError
from edgemodel_operator import observe
from edgemodel_operator.kube import Credentials, operator_client
from edgemodel_operator.metrics import OperatorMetrics
from edgemodel_operator.runtime import PlanCache, Runtime
from tests.operator.test_decide import settings
from tests.operator.test_split_check import split_json


class FakeStore:
    """Answers get_bytes from ``files`` (else a 404 StoreError) and records the calling threads."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[str] = []
        self.threads: set[int] = set()

    def url(self, key: str) -> str:
        return f"http://store:8080/{key}"

    def get_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        self.threads.add(threading.get_ident())
        if key not in self.files:
            raise StoreError(f"GET {self.url(key)}: HTTP 404 not found", retryable=False, status=404)
        return self.files[key]


def runtime(store: Any) -> Runtime:
    rt = Runtime(settings=settings(), metrics=OperatorMetrics(),
                 client=operator_client(Credentials(server="http://127.0.0.1:1")))
    rt.store = store
    return rt


async def test_a_split_plan_is_read_once_and_kept_by_the_runtime() -> None:
    store = FakeStore({"ns/m/3/split.json": json.dumps(split_json()).encode(), "ns/m/4/split.json": b"{not json"})
    rt = runtime(store)
    uri = "http://store:8080/ns/m/3/split.json"
    first = await observe.planned_cuts(rt, "ns", "m", 3, uri)
    again = await observe.planned_cuts(rt, "ns", "m", 3, uri)
    assert first is not None
    assert again is first
    assert store.reads == ["ns/m/3/split.json"], "immutable per revision: read once"
    assert threading.get_ident() not in store.threads, "the synchronous client runs in a worker thread"
    assert rt.plans.of("ns", "m") == {3: first}
    assert await observe.planned_cuts(rt, "ns", "m", 4, "http://store:8080/ns/m/4/split.json") is None
    assert await observe.planned_cuts(rt, "ns", "m", 5, "http://store:8080/ns/m/5/split.json") is None
    assert not rt.plans.has("ns", "m", 4), "unparsable: tried again next time"
    assert not rt.plans.has("ns", "m", 5), "missing: tried again next time"
    await rt.close()


async def test_a_stored_result_is_read_through_the_store_client() -> None:
    result = {"ok": True, "revision": 2, "reason": "", "message": "done"}
    store = FakeStore({"ns/m/2/result.json": json.dumps(result).encode()})
    rt = runtime(store)
    got = await observe.stored_result(rt, "ns", "m", 2)
    assert got is not None
    assert (got.ok, got.revision, got.message) == (True, 2, "done")
    assert await observe.stored_result(rt, "ns", "m", 9) is None
    await rt.close()


def test_the_plan_cache_drops_the_oldest_first() -> None:
    cache = PlanCache(size=2)
    cache.put("a", "m", 1, None)
    cache.put("a", "m", 2, None)
    cache.put("b", "m", 1, None)
    assert not cache.has("a", "m", 1)
    assert cache.has("a", "m", 2)
    assert cache.has("b", "m", 1)
    assert len(cache) == 2
    assert cache.of("a", "m") == {2: None}


async def test_a_chain_json_is_read_once_and_a_revision_without_one_is_remembered() -> None:
    chain = {"kind": "edgemodel-chain/v1", "cuts": ["c1"], "stages": [{"file": "stage-1.onnx"}, {"file": "stage-2.onnx"}]}
    store = FakeStore({"ns/m/3/chain.json": json.dumps(chain).encode(), "ns/m/4/chain.json": b"{not json"})
    rt = runtime(store)
    assert await observe.chain_doc(rt, "ns", "m", 3) == chain
    assert await observe.chain_doc(rt, "ns", "m", 3) == chain
    assert await observe.chain_doc(rt, "ns", "m", 4) is None, "malformed: no chain (the entry serves the whole model)"
    assert await observe.chain_doc(rt, "ns", "m", 5) is None, "no chain.json: not a pipeline revision"
    assert await observe.chain_doc(rt, "ns", "m", 5) is None
    assert store.reads == ["ns/m/3/chain.json", "ns/m/4/chain.json", "ns/m/5/chain.json"], "each read once"
    assert rt.chains.of("ns", "m") == {3: chain, 4: None, 5: None}

    class Down(FakeStore):
        def get_bytes(self, key: str) -> bytes:
            raise StoreError("connection refused", retryable=True)

    rt.store = Down({})  # type: ignore[assignment]
    assert await observe.chain_doc(rt, "ns", "m", 6) is None
    assert not rt.chains.has("ns", "m", 6), "an unreachable store: tried again next time"
    await rt.close()
