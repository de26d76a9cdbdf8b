"""The cloud-side tail over HTTP(S): mTLS, encryption on the wire, errors, and the fallback policies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import CollectorRegistry

from edgemodel.split import codec
from edgemodel.split.devpki import Pki, make_pki
from edgemodel.split.graph import split_model
from edgemodel.split.metrics import SplitMetrics
from edgemodel.split.remote import (
    CloudUnreachable,
    FallbackPolicy,
    RemoteTail,
    RunningServer,
    SplitUnavailable,
    TailRegistry,
    TailRejected,
    TlsFiles,
    make_tail_app,
    run_split,
    start_tail_server,
)
from edgemodel.split.runtime import OrtPart
from edgemodel.split.shaping import ShapingProxy
from edgemodel_dev.net import free_port
from tests.split import models

CUT = "block_relu"
MARKER = "TOP-SECRET-FEATURE-MARKER"


class Parts:
    def __init__(self, model: onnx.ModelProto) -> None:
        split = split_model(model, CUT)
        self.head = OrtPart(split.head.SerializeToString())
        self.tail = OrtPart(split.tail.SerializeToString())
        self.full = OrtPart(model.SerializeToString())
        self.x = models.feeds(model, n=1, batch=2)[0]


class Counting:
    """Wraps a real runner and counts calls (to prove what did or did not run)."""

    def __init__(self, runner: OrtPart) -> None:
        self.runner = runner
        self.calls = 0

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.calls += 1
        return self.runner.run(feeds)


@pytest.fixture(scope="module")
def parts() -> Parts:
    return Parts(models.residual_model())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def plain_server(parts: Parts) -> AsyncIterator[RunningServer]:
    server = await start_tail_server(make_tail_app(parts.tail, model="res", version="3", cut=CUT))
    yield server
    await server.close()


@pytest.fixture
async def tls_server(parts: Parts, pki: Pki) -> AsyncIterator[RunningServer]:
    tls = TlsFiles(ca_file=pki.ca, cert_file=pki.server_cert, key_file=pki.server_key)
    server = await start_tail_server(make_tail_app(parts.tail, model="res", version="3", cut=CUT),
                                     ssl_context=tls.server_context(require_client_cert=True))
    yield server
    await server.close()


def client_tls(pki: Pki) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)


async def test_split_over_http_reproduces_the_whole_model(parts: Parts, plain_server: RunningServer) -> None:
    expected = parts.full.run(parts.x)["logits"]
    async with RemoteTail(plain_server.url, "res", "3", CUT, wire=codec.WireFormat.parse("fp32")) as remote:
        outcome = await run_split(parts.head, remote, None, FallbackPolicy.FAIL, parts.x)
    assert outcome.path == "split"
    np.testing.assert_allclose(outcome.outputs["logits"], expected, rtol=1e-5, atol=1e-5)
    features = parts.head.run(parts.x)
    assert outcome.bytes_up == len(codec.encode(features))
    assert outcome.bytes_down == len(codec.encode({"logits": expected}))
    assert outcome.head_s > 0
    assert outcome.tail_s > 0
    assert outcome.fallback_reason is None


async def test_int8_features_keep_the_answer(parts: Parts, plain_server: RunningServer) -> None:
    expected = parts.full.run(parts.x)["logits"]
    async with RemoteTail(plain_server.url, "res", "3", CUT, wire=codec.WireFormat.parse("int8+zstd")) as remote:
        result = await remote.infer(parts.head.run(parts.x))
    got = result.outputs["logits"]
    assert np.argmax(got, axis=1).tolist() == np.argmax(expected, axis=1).tolist()
    assert np.max(np.abs(got - expected)) < 0.05 * np.max(np.abs(expected))
    assert result.bytes_up < len(codec.encode(parts.head.run(parts.x))) / 4


async def test_tail_errors_are_rejections_not_unreachability(parts: Parts, plain_server: RunningServer) -> None:
    features = parts.head.run(parts.x)
    async with RemoteTail(plain_server.url, "res", "3", "stem_relu") as wrong_cut:
        with pytest.raises(TailRejected, match="no tail for cut 'stem_relu'") as info:
            await wrong_cut.infer(features)
        assert info.value.status == 409
    async with RemoteTail(plain_server.url, "res", "4", CUT) as wrong_version:
        with pytest.raises(TailRejected, match="no tail for model 'res' version '4'") as info:
            await wrong_version.infer(features)
        assert info.value.status == 404
    async with RemoteTail(plain_server.url, "res", "3", CUT) as remote:
        with pytest.raises(TailRejected, match="bad feature message: not a feature message") as info:
            await remote.send(b"GARBAGE-not-a-message")
        assert info.value.status == 400
        with pytest.raises(TailRejected, match="the body holds \\['other'\\], not the cut 'block_relu'"):
            await remote.infer({"other": features[CUT]})
        assert remote.available()  # rejections do not trigger the cool-down
        health = await remote.health()
        rtt = await remote.ping(count=3)
    assert health == {"status": "ok", "tails": [{"model": "res", "version": "3", "cuts": [CUT]}]}
    assert rtt > 0


async def test_ping_through_a_slow_link_includes_its_round_trip(plain_server: RunningServer) -> None:
    async with ShapingProxy("127.0.0.1", plain_server.port, bandwidth_mbit_s=100, rtt_ms=40) as proxy, \
            RemoteTail(f"http://127.0.0.1:{proxy.port}", "res", "3", CUT) as remote:
        assert await remote.ping(count=2) >= 0.040  # the proxy holds every byte for RTT/2 each way
    async with RemoteTail(f"http://127.0.0.1:{free_port()}", "res", "3", CUT) as down:
        with pytest.raises(CloudUnreachable, match="health"):
            await down.ping()


async def test_mtls_round_trip_and_the_wire_is_encrypted(parts: Parts, pki: Pki, tls_server: RunningServer,
                                                         plain_server: RunningServer) -> None:
    secret = {MARKER: np.frombuffer(b"PLAINTEXT-PATTERN" * 64, np.uint8).copy()}
    tls_port, plain_port = tls_server.port, plain_server.port
    captured = {}
    for name, port, scheme, tls in (("tls", tls_port, "https", client_tls(pki)), ("plain", plain_port, "http", None)):
        async with ShapingProxy("127.0.0.1", port, bandwidth_mbit_s=1000, rtt_ms=0, capture_limit=1 << 20) as proxy:
            url = f"{scheme}://127.0.0.1:{proxy.port}"
            async with RemoteTail(url, "res", "3", CUT, tls=tls) as remote:
                # The marker tensor is not the cut, so the tail answers 400 after reading the whole body.
                with pytest.raises(TailRejected, match="not the cut"):
                    await remote.infer(secret)
                result = await remote.infer(parts.head.run(parts.x))
            captured[name] = (bytes(proxy.stats.captured_up), bytes(proxy.stats.captured_down))
            assert proxy.stats.up >= result.bytes_up
        np.testing.assert_allclose(result.outputs["logits"], parts.full.run(parts.x)["logits"], rtol=0.05, atol=0.05)
    tls_up, tls_down = captured["tls"]
    plain_up, plain_down = captured["plain"]
    # Control: without TLS the marker, the pattern and the HTTP request line are readable on the wire.
    assert MARKER.encode() in plain_up
    assert b"PLAINTEXT-PATTERN" in plain_up
    assert b"POST /v1/split/res/3/infer" in plain_up
    # With TLS none of it is: the first bytes are a TLS handshake record (0x16, version 3.x).
    assert tls_up[:2] == b"\x16\x03"
    for needle in (MARKER.encode(), b"PLAINTEXT-PATTERN", b"POST ", b"X-Edgemodel-Cut", CUT.encode()):
        assert needle not in tls_up
        assert needle not in tls_down
    assert b"HTTP/1.1 200" in plain_down
    assert b"HTTP/1.1" not in tls_down


async def test_tls_server_refuses_plaintext_and_clients_without_a_trusted_cert(
        parts: Parts, pki: Pki, tls_server: RunningServer) -> None:
    features = parts.head.run(parts.x)
    plain_url = tls_server.url.replace("https://", "http://")
    attempts = {
        "plaintext": RemoteTail(plain_url, "res", "3", CUT),
        "no client cert": RemoteTail(tls_server.url, "res", "3", CUT, tls=TlsFiles(ca_file=pki.ca)),
        "cert from another CA": RemoteTail(tls_server.url, "res", "3", CUT, tls=TlsFiles(
            ca_file=pki.ca, cert_file=pki.rogue_client_cert, key_file=pki.rogue_client_key)),
        "server not trusted": RemoteTail(tls_server.url, "res", "3", CUT, tls=TlsFiles(
            ca_file=pki.other_ca, cert_file=pki.client_cert, key_file=pki.client_key)),
    }
    for what, remote in attempts.items():
        async with remote:
            with pytest.raises(CloudUnreachable) as info:
                await remote.infer(features)
        assert "unreachable" in str(info.value), what
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    # A raw plaintext HTTP request gets no HTTP answer at all.
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port)
    writer.write(b"POST /v1/split/res/3/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert b"HTTP/1.1 200" not in reply
    async with RemoteTail(tls_server.url, "res", "3", CUT, tls=client_tls(pki)) as good:
        assert (await good.infer(features)).outputs["logits"].shape == (2, 5)


def test_tls_configuration_mistakes_name_the_field(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split.cloudUrl: 'http://x' is plain http but TLS files are configured"):
        RemoteTail("http://x", "m", "1", CUT, tls=TlsFiles(ca_file=pki.ca))
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        RemoteTail("ftp://x", "m", "1", CUT)
    with pytest.raises(ValueError, match="tls.caFile: .* does not exist"):
        TlsFiles(ca_file=tmp_path / "missing.pem").client_context()
    with pytest.raises(ValueError, match="certFile and keyFile go together"):
        TlsFiles(ca_file=pki.ca, cert_file=pki.client_cert).client_context()
    with pytest.raises(ValueError, match="tls.caFile: needed to verify client certificates"):
        TlsFiles(cert_file=pki.server_cert, key_file=pki.server_key).server_context()


async def test_unreachable_cloud_starts_a_cool_down(parts: Parts) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    features = parts.head.run(parts.x)
    async with RemoteTail(url, "res", "3", CUT, cooldown_s=60) as remote:
        with pytest.raises(CloudUnreachable, match="unreachable: ClientConnectorError"):
            await remote.infer(features)
        assert not remote.available()
        with pytest.raises(CloudUnreachable, match="in a 60 s cool-down after: ClientConnectorError"):
            await remote.infer(features)
    async with RemoteTail(url, "res", "3", CUT, cooldown_s=0) as no_cooldown:
        with pytest.raises(CloudUnreachable):
            await no_cooldown.infer(features)
        assert no_cooldown.available()


async def test_fallback_policy_local_runs_the_whole_model(parts: Parts) -> None:
    head, full = Counting(parts.head), Counting(parts.full)
    async with RemoteTail(f"http://127.0.0.1:{free_port()}", "res", "3", CUT, cooldown_s=60) as remote:
        first = await run_split(head, remote, full, FallbackPolicy.LOCAL, parts.x)
        second = await run_split(head, remote, full, FallbackPolicy.LOCAL, parts.x)
    for outcome in (first, second):
        assert outcome.path == "local"
        np.testing.assert_array_equal(outcome.outputs["logits"], parts.full.run(parts.x)["logits"])
        assert outcome.local_s > 0
    assert first.fallback_reason is not None
    assert "unreachable" in first.fallback_reason
    assert second.fallback_reason is not None
    assert "cool-down" in second.fallback_reason
    assert head.calls == 1  # during the cool-down the head is not even run
    assert full.calls == 2


async def test_fallback_policy_local_without_a_full_model_answers_503(parts: Parts) -> None:
    async with RemoteTail(f"http://127.0.0.1:{free_port()}", "res", "3", CUT) as remote:
        with pytest.raises(SplitUnavailable, match="no full model is assigned") as info:
            await run_split(parts.head, remote, None, FallbackPolicy.LOCAL, parts.x)
    assert info.value.http_status == 503


async def test_fallback_policy_fail_never_runs_the_local_model(parts: Parts) -> None:
    full = Counting(parts.full)
    async with RemoteTail(f"http://127.0.0.1:{free_port()}", "res", "3", CUT) as remote:
        with pytest.raises(SplitUnavailable, match=r"\(policy is fail\): cloud tail .* unreachable"):
            await run_split(parts.head, remote, full, FallbackPolicy.FAIL, parts.x)
    assert full.calls == 0


async def test_overloaded_or_failing_tail_falls_back(parts: Parts) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_tail(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        entered.set()
        release.wait(30)
        return parts.tail.run(feeds)

    def broken_tail(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        raise RuntimeError("tail exploded")

    registry = TailRegistry()
    registry.add("res", "3", slow_tail, CUT)
    registry.add("broken", "1", broken_tail)
    server = await start_tail_server(make_tail_app(registry, max_inflight=1))
    try:
        async with RemoteTail(server.url, "res", "3", CUT) as busy, \
                RemoteTail(server.url, "broken", "1", CUT) as broken:
            first = asyncio.ensure_future(run_split(parts.head, busy, parts.full, FallbackPolicy.LOCAL, parts.x))
            assert await asyncio.to_thread(entered.wait, 30)
            second = await run_split(parts.head, busy, parts.full, FallbackPolicy.LOCAL, parts.x)
            release.set()
            assert (await first).path == "split"
            assert second.path == "local"
            assert second.fallback_reason is not None
            assert "HTTP 503: tail overloaded" in second.fallback_reason
            failed = await run_split(parts.head, broken, parts.full, FallbackPolicy.LOCAL, parts.x)
            assert failed.path == "local"
            assert failed.fallback_reason is not None
            assert "HTTP 500" in failed.fallback_reason
            with pytest.raises(SplitUnavailable, match="HTTP 500: the tail failed"):
                await run_split(parts.head, broken, parts.full, FallbackPolicy.FAIL, parts.x)
    finally:
        release.set()
        await server.close()


async def test_metrics_split_by_stage(parts: Parts, plain_server: RunningServer) -> None:
    registry = CollectorRegistry()
    metrics = SplitMetrics(registry)
    async with RemoteTail(plain_server.url, "res", "3", CUT) as remote:
        ok = await run_split(parts.head, remote, None, FallbackPolicy.FAIL, parts.x)
    async with RemoteTail(f"http://127.0.0.1:{free_port()}", "res", "3", CUT) as down:
        local = await run_split(parts.head, down, parts.full, FallbackPolicy.LOCAL, parts.x)
    metrics.observe("team-a", "res", "3", ok)
    metrics.observe("team-a", "res", "3", local)
    metrics.unavailable("team-a", "res", "3")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"namespace": "team-a", "model": "res", "version": "3", **labels})

    assert value("edgemodel_split_requests_total", path="split") == 1
    assert value("edgemodel_split_requests_total", path="local") == 1
    assert value("edgemodel_split_requests_total", path="unavailable") == 1
    assert value("edgemodel_split_transfer_bytes_total", direction="up") == ok.bytes_up
    assert value("edgemodel_split_transfer_bytes_total", direction="down") == ok.bytes_down
    for stage in ("head", "encode", "transfer", "tail", "local"):
        assert value("edgemodel_split_stage_duration_seconds_count", stage=stage) is not None, stage
    assert value("edgemodel_split_stage_duration_seconds_count", stage="head") == 2
    assert value("edgemodel_split_stage_duration_seconds_count", stage="tail") == 1
    assert value("edgemodel_split_stage_duration_seconds_sum", stage="tail") == pytest.approx(ok.tail_s)
