"""FederatedTraining: train one model on the data of many edge nodes, exchanging model updates only.

The operator starts one aggregation server (Flower) in the cloud and one training client per selected
node; on success the trained model becomes the source of the named EdgeModel (a new revision).
Only pydantic and the standard library may be imported here (an import-linter contract).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from edgemodel.api.base import ApiModel, Condition, LabelSelector, ObjectMeta, StatusModel
from edgemodel.api.edgemodel import URI_PATTERN, SourceFormat

ARRAY_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
NODE_PLACEHOLDER = "{node}"
MAX_ROUND_RECORDS = 100


class Strategy(StrEnum):
    """Aggregation strategies (Flower's implementations)."""

    FED_AVG = "FedAvg"
    FED_PROX = "FedProx"
    FED_ADAM = "FedAdam"


class InitialModel(ApiModel):
    """The model training starts from: a TorchScript file, as an EdgeModel's spec.source."""

    uri: str = Field(pattern=URI_PATTERN)
    """Location of the model file: file://, http(s):// or s3://, e.g. s3://models/digits.pt."""
    format: Literal[SourceFormat.TORCHSCRIPT] = SourceFormat.TORCHSCRIPT
    """Only TorchScript (torch.jit.save(torch.jit.script(model))) can be trained and saved again."""


class NodeData(ApiModel):
    """Where each node's local training data is: an .npz with an inputs array and a labels array."""

    path: str | None = Field(default=None, pattern=r"^/.+\.npz$")
    """Absolute path of the .npz on each node (mounted read-only from the node), e.g. /var/lib/edgemodel/data/train.npz."""
    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """Instead of path: a URI the client fetches, where {node} is replaced by the node's name."""
    input_array: str = Field(default="input", pattern=ARRAY_NAME, max_length=253)
    """Name of the inputs array in the .npz."""
    labels_array: str = Field(default="labels", pattern=ARRAY_NAME, max_length=253)
    """Name of the 1-D integer class labels array in the .npz."""

    @model_validator(mode="after")
    def _one_location(self) -> NodeData:
        if (self.path is None) == (self.uri is None):
            raise ValueError(
                "spec.data: set exactly one of path (a file on each node) or uri (fetched by each node)"
            )
        return self


class CloudValidation(ApiModel):
    """The held-out set the server evaluates the global model on after each round (never leaves the cloud)."""

    data_uri: str = Field(pattern=URI_PATTERN)
    """An .npz with the inputs array and the labels array (same names as spec.data)."""
    target_accuracy: float | None = Field(default=None, gt=0.0, le=1.0)
    """Stop as soon as the global model reaches this top-1 accuracy (0.95 = 95%); empty: train all rounds."""


class LocalTraining(ApiModel):
    """What each client does with the global model in one round."""

    epochs: int = Field(default=1, ge=1, le=100)
    """Passes over the node's data per round."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Samples per optimiser step."""
    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    """SGD learning rate (momentum 0.9)."""


class StrategyOptions(ApiModel):
    """Which aggregation and its knobs."""

    name: Strategy = Strategy.FED_AVG
    """FedAvg (weighted by sample counts), FedProx (FedAvg with a proximal term for non-IID data) or FedAdam."""
    proximal_mu: float = Field(default=0.01, ge=0.0, le=10.0)
    """FedProx: weight of the proximal term mu/2*||w - w_global||^2 in each client's loss."""
    server_learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)
    """FedAdam: the server optimiser's learning rate (eta)."""


class FederatedTrainingSpec(ApiModel):
    """Desired training: model, nodes, data, strategy, rounds and stop conditions, the EdgeModel it feeds."""

    model: InitialModel
    """The model training starts from."""
    selector: LabelSelector = Field(default_factory=LabelSelector)
    """Which edge nodes train (by their Node labels); empty selects every edge node (node-role.kubernetes.io/edge=true,
    where the agents run). Nodes labelled edgemodel.io/tier=cloud never train."""
    data: NodeData
    """Where each node's local data is."""
    validation: CloudValidation
    """The held-out set in the cloud and the accuracy target."""
    strategy: StrategyOptions = Field(default_factory=StrategyOptions)
    """Aggregation strategy and its knobs."""
    training: LocalTraining = Field(default_factory=LocalTraining)
    """Local training per round."""
    rounds: int = Field(default=10, ge=1, le=1000)
    """Rounds at most."""
    min_clients: int = Field(default=2, ge=1, le=10000)
    """Clients that must be connected before a round starts."""
    max_drop_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Fraction of a round's clients that may fail or time out; the round still aggregates the rest (a round
    with more failures is skipped and the global model stays)."""
    round_timeout_seconds: int = Field(default=120, ge=1, le=86400)
    """A client that has not answered within this time counts as dropped for the round."""
    secure_aggregation: bool = False
    """SecAgg+ (Flower's SecAggPlusWorkflow): the server sees only the weighted sum of a round's updates."""
    edge_model: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Name of an EdgeModel in the same namespace whose spec.source becomes the trained model on success."""
    port: int = Field(default=9092, ge=1024, le=65535)
    """Port of the aggregation server (gRPC with TLS); its status endpoint listens on port+1."""
    deadline_seconds: int = Field(default=3600, ge=60, le=7 * 86400)
    """Wall-time bound of the whole training; the Jobs are stopped after it."""

    @model_validator(mode="after")
    def _rules(self) -> FederatedTrainingSpec:
        problems = []
        if self.secure_aggregation and self.min_clients < 2:
            problems.append(
                "spec.minClients: secure aggregation (SecAgg+) needs at least 2 clients per round; "
                "set minClients >= 2 or secureAggregation false"
            )
        if self.data.uri is not None and NODE_PLACEHOLDER not in self.data.uri:
            problems.append(f"spec.data.uri: must contain {NODE_PLACEHOLDER} so each node reads its own data")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class FederatedPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class RoundRecord(StatusModel):
    """What one round did."""

    round: int
    """Round number (1-based)."""
    participating: list[str] = Field(default_factory=list)
    """Nodes whose update was aggregated."""
    dropped: list[str] = Field(default_factory=list)
    """Nodes selected for the round that failed or timed out."""
    aggregated: bool = True
    """False when more than maxDropFraction of the clients dropped (the global model was kept)."""
    train_loss: float | None = None
    """Mean training loss of the clients, weighted by sample counts."""
    loss: float | None = None
    """Validation loss of the global model after the round."""
    accuracy: float | None = None
    """Validation top-1 accuracy of the global model after the round."""
    bytes_exchanged: int = 0
    """Model bytes sent to and received from the clients in the round."""
    seconds: float = 0.0
    """Wall time of the round (training and aggregation)."""


class TrainedModel(StatusModel):
    """The trained model in the artifact store."""

    uri: str
    """Where it is (the artifact store)."""
    sha256: str
    """sha256 of the file."""
    round: int
    """The round it was taken after."""
    accuracy: float
    """Its validation accuracy."""


class FederatedTrainingStatus(StatusModel):
    """Observed state, written by the operator."""

    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    phase: FederatedPhase = FederatedPhase.PENDING
    """Pending, Training, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Started, Completed, Failed, ModelPublished, InvalidSpec (metav1.Condition shape)."""
    nodes: list[str] = Field(default_factory=list)
    """Nodes selected to train."""
    round: int = 0
    """Last finished round."""
    accuracy: float | None = None
    """Validation accuracy of the global model after the last round."""
    clients: str = "0/0"
    """Clients aggregated in the last round over nodes selected, e.g. 2/3."""
    rounds: list[RoundRecord] = Field(default_factory=list)
    """Per-round records, newest last (the last 100)."""
    model: TrainedModel | None = None
    """The trained model, once uploaded."""
    started_at: str | None = None
    """When the Jobs were created (RFC 3339)."""
    finished_at: str | None = None
    """When training finished (RFC 3339)."""


class FederatedTraining(StatusModel):
    """A FederatedTraining object as stored in the API."""

    api_version: Literal["edgemodel.io/v1alpha1"] = "edgemodel.io/v1alpha1"
    kind: Literal["FederatedTraining"] = "FederatedTraining"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FederatedTrainingSpec
    status: FederatedTrainingStatus | None = None
