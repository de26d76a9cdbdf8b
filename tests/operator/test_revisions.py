"""Generations to revisions, and the bounded history in status."""

from __future__ import annotations

import json

from edgemodel.api import EdgeModelStatus, RevisionOrigin, RevisionOutcome
from edgemodel_operator import revisions
from edgemodel_operator.constants import ANNOTATION_REVISION_ORIGIN
from tests.operator.builders import spec


def test_build_hash_follows_what_is_built_not_where_or_how_it_is_rolled_out() -> None:
    base = revisions.build_hash(spec())
    assert revisions.build_hash(spec()) == base
    assert revisions.build_hash(spec(selector={"matchLabels": {"site": "b"}})) == base
    assert revisions.build_hash(spec(rollout={"strategy": "AllAtOnce"}, suspend=True)) == base
    assert revisions.build_hash(spec(serving={"batching": {"enabled": True}})) == base
    assert revisions.build_hash(spec(source={"uri": "file:///models/other.pt", "format": "TorchScript"})) != base
    assert revisions.build_hash(spec(optimization={"int8": {"enabled": False}})) != base
    # Spelling a default out does not make a new build.
    assert revisions.build_hash(spec(validation={"metric": "top1"})) == base


def test_open_revision_numbers_upwards_and_supersedes_unfinished_ones() -> None:
    status = EdgeModelStatus()
    assert revisions.needs_new_revision(status, "h1")
    status = revisions.open_revision(status, 1, "h1", "2025-01-01T00:00:00Z", 10)
    assert status.target_revision == 1
    assert not revisions.needs_new_revision(status, "h1")
    status = revisions.open_revision(status, 2, "h2", "2025-01-01T00:01:00Z", 10)
    assert [(r.revision, r.outcome, r.generation) for r in status.history] == [
        (1, RevisionOutcome.SUPERSEDED, 1), (2, RevisionOutcome.CONVERTING, 2)]
    assert "superseded by revision 2" in status.history[0].message
    assert revisions.latest(status).revision == 2  # type: ignore[union-attr]


def test_promote_keeps_the_rollback_target() -> None:
    status = revisions.open_revision(EdgeModelStatus(), 1, "h1", "t", 10)
    status = revisions.promote(status, 1, "ok")
    status = revisions.open_revision(status, 2, "h2", "t", 10)
    status = revisions.promote(status, 2, "ok")
    assert (status.revision, status.previous_revision) == (2, 1)
    outcomes = {r.revision: r.outcome for r in status.history}
    assert outcomes == {1: RevisionOutcome.SUPERSEDED, 2: RevisionOutcome.AVAILABLE}


def test_history_is_bounded_but_keeps_serving_and_rollback_revisions() -> None:
    status = revisions.open_revision(EdgeModelStatus(), 1, "h1", "t", 3)
    status = revisions.promote(status, 1, "ok")
    for n in range(2, 8):
        status = revisions.open_revision(status, n, f"h{n}", "t", 3)
        status = revisions.set_outcome(status, n, RevisionOutcome.FAILED, "bad")
    kept = [r.revision for r in status.history]
    assert len(kept) == 3
    assert 1 in kept, "the serving revision is never trimmed"
    assert kept[-1] == 7


def test_the_origin_annotation_round_trips_and_binds_to_its_source() -> None:
    origin = RevisionOrigin(kind="ContinualLearning", name="round-3", reason="drift on 2 node(s)",
                            metrics={"newAccuracyAfter": 0.93})
    annotations = revisions.origin_annotation(origin, "file:///models/digits.pt")
    assert json.loads(annotations[ANNOTATION_REVISION_ORIGIN])["sourceUri"] == "file:///models/digits.pt"
    assert revisions.origin(annotations, spec()) == origin
    assert revisions.origin(annotations, spec(source={"uri": "file:///models/x.pt", "format": "TorchScript"})) is None
    assert revisions.origin({}, spec()) is None
    assert revisions.origin({ANNOTATION_REVISION_ORIGIN: "not json"}, spec()) is None
    no_kind = json.dumps({"name": "x", "sourceUri": "file:///models/digits.pt"})
    assert revisions.origin({ANNOTATION_REVISION_ORIGIN: no_kind}, spec()) is None
    status = revisions.open_revision(EdgeModelStatus(), 1, "h1", "t", 10, origin)
    assert status.history[0].origin == origin
    assert status.to_k8s()["history"][0]["origin"] == {
        "kind": "ContinualLearning", "name": "round-3", "reason": "drift on 2 node(s)",
        "metrics": {"newAccuracyAfter": 0.93}}
