"""EdgeAgent.spec.models entries and the JSON patches that change exactly one of them.

Each write touches only this model's entry and is guarded by a ``test`` of the agent's
``metadata.generation`` (it moves only when spec changes), so two EdgeModels writing the same
agent never overwrite each other: the loser gets a 422, re-reads and retries. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgemodel.api import ArtifactRef, ModelAssignment, ModelRole, SplitAssignment
from edgemodel.api.edgemodel import Serving, Split, SplitFallback
from edgemodel_operator.scheduling import AgentView, choose_artifact, is_tail

JsonPatch = list[dict[str, Any]]


def rebase_uri(uri: str, store_url: str, agent_base_url: str) -> str:
    """The artifact URI as agents reach the store (a different base URL may be configured)."""
    store = store_url.rstrip("/")
    if agent_base_url.rstrip("/") != store and uri.startswith(store + "/"):
        return agent_base_url.rstrip("/") + uri[len(store):]
    return uri


def desired_assignment(
    namespace: str,
    name: str,
    revision: int,
    agent: AgentView,
    artifacts: Sequence[ArtifactRef],
    serving: Serving,
    store_url: str,
    agent_base_url: str,
    split: Split | None = None,
    cloud_url: str = "",
) -> dict[str, Any] | None:
    """The spec.models entry for ``agent`` (its hardware class's artifact), or None without one.

    A revision built with a split gets a head entry (head.onnx, the cloud URL, the fallback policy and,
    with fallback local, the whole model) when ``split`` is on; otherwise the whole model.
    """
    artifact = choose_artifact(agent.hardware_class, artifacts)
    if artifact is None or not artifact.manifest_uri or not artifact.signature:
        return None
    uri, sha256, role, split_entry = artifact.uri, artifact.sha256, ModelRole.FULL, None
    if split is not None and split.enabled and artifact.split is not None:
        local = split.fallback == SplitFallback.LOCAL
        uri, sha256, role = artifact.split.head_uri, artifact.split.head_sha256, ModelRole.HEAD
        split_entry = SplitAssignment(
            cut=artifact.split.cut, wire=artifact.split.wire, cloud_url=cloud_url, fallback=split.fallback,
            full_artifact_uri=rebase_uri(artifact.uri, store_url, agent_base_url) if local else None,
            full_sha256=artifact.sha256 if local else None,
        )
    assignment = ModelAssignment(
        name=name,
        namespace=namespace,
        revision=revision,
        artifact_uri=rebase_uri(uri, store_url, agent_base_url),
        sha256=sha256,
        manifest_uri=rebase_uri(artifact.manifest_uri, store_url, agent_base_url),
        signature=artifact.signature,
        precision=artifact.precision,
        accelerator=serving.accelerator,
        gpu_fallback_to_cpu=serving.gpu_fallback_to_cpu,
        batching=serving.batching,
        role=role,
        split=split_entry,
    )
    return assignment.to_k8s()


def tail_assignment(namespace: str, name: str, revision: int, artifacts: Sequence[ArtifactRef], store_url: str,
                    agent_base_url: str) -> dict[str, Any] | None:
    """The spec.models entry of a revision's tail on a cloud agent, or None when the revision has no split."""
    artifact = next((a for a in artifacts if a.split is not None and a.manifest_uri and a.signature), None)
    if artifact is None or artifact.split is None:
        return None
    assignment = ModelAssignment(
        name=name, namespace=namespace, revision=revision,
        artifact_uri=rebase_uri(artifact.split.tail_uri, store_url, agent_base_url),
        sha256=artifact.split.tail_sha256,
        manifest_uri=rebase_uri(artifact.manifest_uri, store_url, agent_base_url),
        signature=artifact.signature, role=ModelRole.TAIL,
        split=SplitAssignment(cut=artifact.split.cut, wire=artifact.split.wire),
    )
    return assignment.to_k8s()


def tails_patch(agent: AgentView, namespace: str, name: str,
                desired: Mapping[int, Mapping[str, Any]]) -> JsonPatch | None:
    """JSON patch making the agent's tail entries of the model exactly ``desired`` (revision -> entry).

    Tails are few and per revision, so the patch rewrites spec.models whole, guarded by the generation.
    """
    def mine(entry: Mapping[str, Any]) -> bool:
        return is_tail(entry) and entry.get("name") == name and entry.get("namespace") == namespace

    current = {int(m.get("revision") or 0): m for m in agent.spec_models if mine(m)}
    if current.keys() == desired.keys() and all(same_entry(current[r], desired[r]) for r in desired):
        return None
    models = [dict(m) for m in agent.spec_models if not mine(m)]
    models += [dict(desired[r]) for r in sorted(desired)]
    guard: JsonPatch = [{"op": "test", "path": "/metadata/generation", "value": agent.generation}]
    if not agent.has_spec:
        return [*guard, {"op": "add", "path": "/spec", "value": {"models": models}}]
    return [*guard, {"op": "add", "path": "/spec/models", "value": models}]


def removal_patch(agent: AgentView, *, namespace: str, name: str) -> JsonPatch | None:
    """JSON patch taking every entry of the model off the agent (its own and its tails); None without any."""
    kept = [dict(m) for m in agent.spec_models if not (m.get("name") == name and m.get("namespace") == namespace)]
    if len(kept) == len(agent.spec_models):
        return None
    return [{"op": "test", "path": "/metadata/generation", "value": agent.generation},
            {"op": "add", "path": "/spec/models", "value": kept}]


def same_entry(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether an existing entry already says what ``desired`` says (defaults filled in on both)."""
    try:
        normalised = ModelAssignment.model_validate(dict(current)).to_k8s()
    except ValueError:
        return False
    return normalised == dict(desired)


def patch_for(agent: AgentView, namespace: str, name: str, desired: Mapping[str, Any] | None) -> JsonPatch | None:
    """JSON patch moving the agent's entry for the model to ``desired`` (None: remove); None if nothing to do."""
    index = agent.assignment_index(namespace, name)
    guard: JsonPatch = [{"op": "test", "path": "/metadata/generation", "value": agent.generation}]
    if desired is None:
        if index is None:
            return None
        return [*guard, *_entry_guard(index, namespace, name), {"op": "remove", "path": f"/spec/models/{index}"}]
    if index is None:
        if not agent.has_spec:
            return [*guard, {"op": "add", "path": "/spec", "value": {"models": [dict(desired)]}}]
        if not agent.spec_models:
            return [*guard, {"op": "add", "path": "/spec/models", "value": [dict(desired)]}]
        return [*guard, {"op": "add", "path": "/spec/models/-", "value": dict(desired)}]
    if same_entry(agent.spec_models[index], desired):
        return None
    return [*guard, *_entry_guard(index, namespace, name),
            {"op": "replace", "path": f"/spec/models/{index}", "value": dict(desired)}]


def _entry_guard(index: int, namespace: str, name: str) -> JsonPatch:
    return [
        {"op": "test", "path": f"/spec/models/{index}/name", "value": name},
        {"op": "test", "path": f"/spec/models/{index}/namespace", "value": namespace},
    ]
