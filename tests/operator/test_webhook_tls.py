"""The validating admission webhook over TLS, as the API server calls it: a real operator process.

The operator serves kopf's webhook with ``--webhook-cert/--webhook-key``; a client that trusts the
CA gets AdmissionReview answers over HTTPS, plaintext HTTP gets no answer, and a client that does
not trust the CA refuses the server.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgemodel.split.devpki import Pki, make_pki
from edgemodel_dev.demo.stack import SystemStack
from edgemodel_dev.net import free_port
from tests.operator.builders import spec


class WebhookStack(SystemStack):
    """The emulator and one operator with its webhook on HTTPS (no store or agents: admission only)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.pki: Pki = make_pki(workdir / "pki")
        self.webhook_port = free_port()

    def start(self) -> None:
        self.start_control_plane()
        self.run_operator("operator", free_port(), free_port(), [
            "--standalone", "--webhook-port", str(self.webhook_port),
            "--webhook-cert", str(self.pki.server_cert), "--webhook-key", str(self.pki.server_key)])
        # kopf opens the webhook server a moment after the liveness probe answers
        self.wait_for(f"the webhook on port {self.webhook_port}", self._webhook_listens, 60)

    def _webhook_listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.webhook_port), timeout=1).close()
        except OSError:
            return False
        return True

    def review(self, doc: dict[str, Any], context: ssl.SSLContext | None, scheme: str = "https") -> dict[str, Any]:
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "0a1b", "kind": {"group": "edgemodel.io", "version": "v1alpha1", "kind": "EdgeModel"},
            "resource": {"group": "edgemodel.io", "version": "v1alpha1", "resource": "edgemodels"},
            "operation": "CREATE", "namespace": "default", "name": doc["metadata"]["name"], "object": doc,
            "userInfo": {"username": "someone"}, "dryRun": False}}
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.webhook_port}/validate/validate",
                                         data=json.dumps(review).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            answer: dict[str, Any] = json.loads(resp.read())["response"]
        return answer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookStack]:
    with WebhookStack(tmp_path_factory.mktemp("webhook-tls")) as s:
        yield s


def edgemodel(name: str, **overrides: Any) -> dict[str, Any]:
    return {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": name, "namespace": "default"},
            "spec": spec(**overrides).to_k8s()}


def test_admission_reviews_are_answered_over_https_for_clients_trusting_the_ca(stack: WebhookStack) -> None:
    trusted = ssl.create_default_context(cafile=str(stack.pki.ca))
    assert stack.review(edgemodel("good"), trusted)["allowed"] is True
    bad = edgemodel("bad")
    bad["spec"]["split"] = {"cut": "auto"}  # auto without the link it plans for
    answer = stack.review(bad, trusted)
    assert answer["allowed"] is False
    assert "spec.split.link: cut auto needs the link" in answer["status"]["message"]


def test_plaintext_and_untrusting_clients_get_no_answer(stack: WebhookStack) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        stack.review(edgemodel("plain"), None, scheme="http")
    untrusting = ssl.create_default_context(cafile=str(stack.pki.other_ca))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        stack.review(edgemodel("untrusting"), untrusting)
