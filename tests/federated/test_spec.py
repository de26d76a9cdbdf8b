"""FederatedTraining spec validation (errors name the field), strategy selection and the operator's pure parts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edgemodel.api import LabelSelector
from edgemodel.api.federated import FederatedTrainingSpec, FederatedTrainingStatus, RoundRecord
from edgemodel_operator import federated as fl
from edgemodel_operator.settings import OperatorSettings


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "file:///models/digits.pt"},
        "data": {"path": "/var/lib/edgemodel/federated/train.npz"},
        "validation": {"dataUri": "file:///data/val.npz", "targetAccuracy": 0.9},
    }
    base.update(overrides)
    return base


def error_text(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        FederatedTrainingSpec.model_validate(raw)
    return str(info.value)


def test_defaults_are_fedavg_over_ten_rounds() -> None:
    parsed = FederatedTrainingSpec.model_validate(spec())
    assert parsed.strategy.name == "FedAvg"
    assert parsed.rounds == 10
    assert parsed.min_clients == 2
    assert parsed.model.format == "TorchScript"


def test_secure_aggregation_is_accepted_with_two_or_more_clients() -> None:
    assert FederatedTrainingSpec.model_validate(spec(secureAggregation=True)).secure_aggregation
    assert "spec.minClients" in error_text(spec(secureAggregation=True, minClients=1))
    assert FederatedTrainingSpec.model_validate(spec(minClients=1)).min_clients == 1


def test_data_needs_exactly_one_location() -> None:
    both = error_text(spec(data={"path": "/d/train.npz", "uri": "http://s/{node}.npz"}))
    assert "spec.data" in both
    assert "exactly one" in both
    assert "spec.data" in error_text(spec(data={}))


def test_data_uri_needs_the_node_placeholder() -> None:
    assert "spec.data.uri" in error_text(spec(data={"uri": "http://store/data.npz"}))
    assert FederatedTrainingSpec.model_validate(spec(data={"uri": "http://store/{node}/train.npz"})).data.uri


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("rounds", 0, "rounds"),
        ("maxDropFraction", 1.0, "maxDropFraction"),
        ("minClients", 0, "minClients"),
        ("model", {"uri": "file:///m.onnx", "format": "ONNX"}, "model.format"),
        ("data", {"path": "relative/train.npz"}, "data.path"),
    ],
)
def test_bad_values_name_their_field(field: str, value: Any, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        FederatedTrainingSpec.model_validate(spec(**{field: value}))
    locations = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert any(loc.startswith(where) for loc in locations), locations


def test_strategy_selection() -> None:
    from flwr.server.strategy import FedAdam, FedAvg, FedProx

    from edgemodel.federated.strategy import build_strategy

    weights = [__import__("numpy").zeros((2, 2), dtype="float32")]

    def no_eval(*_: Any) -> None:
        return None

    fedavg = build_strategy(FederatedTrainingSpec.model_validate(spec(minClients=3)), weights, no_eval)
    assert type(fedavg) is FedAvg
    assert fedavg.min_fit_clients == 3
    assert fedavg.min_available_clients == 3
    assert fedavg.fraction_fit == 1.0
    assert fedavg.fraction_evaluate == 0.0
    assert fedavg.accept_failures
    prox = build_strategy(
        FederatedTrainingSpec.model_validate(spec(strategy={"name": "FedProx", "proximalMu": 0.2})),
        weights,
        no_eval,
    )
    assert isinstance(prox, FedProx)
    assert prox.proximal_mu == 0.2
    adam = build_strategy(
        FederatedTrainingSpec.model_validate(spec(strategy={"name": "FedAdam", "serverLearningRate": 0.03})),
        weights,
        no_eval,
    )
    assert isinstance(adam, FedAdam)
    assert adam.eta == 0.03


def nodes(*items: tuple[str, dict[str, str]]) -> list[dict[str, Any]]:
    return [{"metadata": {"name": n, "labels": labels}} for n, labels in items]


def test_node_selection_leaves_out_the_cloud_tier() -> None:
    edge = {"node-role.kubernetes.io/edge": "true"}
    fleet = nodes(
        ("edge-1", {"site": "a", **edge}),
        ("edge-0", {"site": "a", **edge}),
        ("edge-2", {"site": "b", **edge}),
        ("cloud-0", {"site": "a", "edgemodel.io/tier": "cloud", **edge}),
        ("control-0", {"site": "a"}),
    )
    assert fl.select_nodes(fleet, LabelSelector(match_labels={"site": "a"})) == ["edge-0", "edge-1"]
    assert fl.select_nodes(fleet, LabelSelector()) == ["edge-0", "edge-1", "edge-2"]


def test_problems_name_the_field() -> None:
    parsed = FederatedTrainingSpec.model_validate(spec(minClients=3, edgeModel="digits"))
    assert fl.spec_problems(parsed, [], None)[0].startswith("spec.selector: matches no edge node")
    assert fl.spec_problems(parsed, ["edge-0", "edge-1"], True)[0].startswith("spec.minClients: 3")
    assert fl.spec_problems(parsed, ["a", "b", "c"], False)[0].startswith(
        "spec.edgeModel: no EdgeModel 'digits'"
    )
    assert fl.spec_problems(parsed, ["a", "b", "c"], True) == []


def owner() -> dict[str, Any]:
    return {
        "apiVersion": "edgemodel.io/v1alpha1",
        "kind": "FederatedTraining",
        "metadata": {"name": "digits-fl", "namespace": "ml", "uid": "1234-5678", "generation": 1},
    }


def settings() -> OperatorSettings:
    return OperatorSettings(
        store_url="http://store:8080",
        signing_key_secret="sig",
        converter_image="convert:1",
        store_token_secret="store-token",
    )


def test_client_job_is_pinned_and_least_privileged() -> None:
    parsed = FederatedTrainingSpec.model_validate(spec())
    job = fl.build_client_job(
        owner(), parsed, "edge-7", "digits-fl-fl-server.ml.svc:9092", settings(), fl.FederatedSettings()
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "edge-7"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["args"][:3] == ["federated", "client", "--node"]
    assert "--data" in container["args"]
    assert "/var/lib/edgemodel/federated/train.npz" in container["args"]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert data_mount == {"name": "data", "mountPath": "/var/lib/edgemodel/federated", "readOnly": True}
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"digits-fl-fl-ca"}, "a client gets the CA only, never the server key"
    assert not any(e.get("valueFrom") for e in container["env"]), "no store token on the edge"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "1234-5678"
    obj = json.loads(next(e["value"] for e in container["env"] if e["name"] == "EDGEMODEL_FEDERATED_OBJECT"))
    assert obj["metadata"]["uid"] == "1234-5678"
    assert obj["spec"]["data"]["path"].endswith("train.npz")


def test_server_job_and_service() -> None:
    parsed = FederatedTrainingSpec.model_validate(spec(port=9300))
    job = fl.build_server_job(owner(), parsed, settings(), fl.FederatedSettings())
    pod = job["spec"]["template"]["spec"]
    assert "nodeName" not in pod
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0] == {"key": "node-role.kubernetes.io/edge", "operator": "DoesNotExist"}
    args = pod["containers"][0]["args"]
    assert args[:4] == ["federated", "server", "--tls-dir", fl.TLS_DIR]
    assert "http://store:8080" in args
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {"digits-fl-fl-tls"}
    service = fl.build_service(owner(), parsed)
    assert [p["port"] for p in service["spec"]["ports"]] == [9300, 9301]
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]


def test_long_names_stay_valid() -> None:
    name = fl.client_name("a" * 60, "edge-node-with-a-very-long-name-0001")
    assert len(name) <= 63
    assert name[-1].isalnum()
    assert fl.client_name("a" * 60, "edge-1") != fl.client_name("a" * 60, "edge-2")


def test_progress_merges_rounds_into_status() -> None:
    status = FederatedTrainingStatus(
        rounds=[RoundRecord(round=1, participating=["a", "b", "c"], accuracy=0.5)]
    )
    progress = {
        "rounds": [
            {"round": 1, "participating": ["a", "b", "c"], "accuracy": 0.5},
            {
                "round": 2,
                "participating": ["a", "b"],
                "dropped": ["c"],
                "accuracy": 0.8,
                "bytesExchanged": 1000,
                "seconds": 1.5,
            },
        ]
    }
    new = fl.apply_progress(status, progress, 3)
    assert [r.round for r in new.rounds] == [1, 2]
    assert new.round == 2
    assert new.accuracy == 0.8
    assert new.clients == "2/3"
    assert new.rounds[1].dropped == ["c"]


def test_termination_message_of_the_newest_pod() -> None:
    def pod(finished: str, code: int, message: str) -> dict[str, Any]:
        return {
            "status": {
                "containerStatuses": [
                    {
                        "name": "client",
                        "state": {
                            "terminated": {"exitCode": code, "finishedAt": finished, "message": message}
                        },
                    }
                ]
            }
        }

    pods = [
        pod("2026-01-01T00:00:01Z", 1, "crash"),
        pod("2026-01-01T00:00:05Z", 2, '{"reason": "DataMissing"}'),
    ]
    assert fl.terminated_message(pods, "client") == (2, {"reason": "DataMissing"})
    assert fl.terminated_message(pods, "server") == (None, {})


def test_crd_is_generated() -> None:
    from edgemodel.crds import all_crds

    crd = all_crds()["edgemodel.io_federatedtrainings.yaml"]
    names = crd["spec"]["names"]
    assert names["kind"] == "FederatedTraining"
    assert names["shortNames"] == ["fedt"]
    version = crd["spec"]["versions"][0]
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {
        "Phase",
        "Round",
        "Accuracy",
        "Clients",
    }
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert "roundTimeoutSeconds" in schema["spec"]["properties"]
    assert "bytesExchanged" in schema["status"]["properties"]["rounds"]["items"]["properties"]


def test_cli_has_both_sides() -> None:
    from edgemodel.cli import build_parser

    parser = build_parser()
    server = parser.parse_args(["federated", "server", "--tls-dir", "/tls", "--store-url", "http://store:8080"])
    assert (server.side, str(server.tls_dir), server.store_url) == ("server", "/tls", "http://store:8080")
    client = parser.parse_args(["federated", "client", "--node", "edge-0", "--server", "h:9092", "--ca", "/ca/ca.pem"])
    assert (client.side, client.node, client.server) == ("client", "edge-0", "h:9092")
    with pytest.raises(SystemExit):
        parser.parse_args(["federated", "client", "--node", "edge-0", "--server", "h:9092"])  # TLS or --insecure
