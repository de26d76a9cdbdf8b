"""The agent reconciler's decisions (edge_agent.control.decide) from hand-built snapshots: no I/O, no event loop."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edge_agent.control import decide
from edge_agent.control.decide import (
    CacheUse,
    Fetch,
    Forget,
    Ignore,
    LeaseFacts,
    Refuse,
    RemoveTail,
    Satisfied,
    Start,
    StepFailed,
    Unload,
)
from edge_agent.control.observe import ModelFacts, ServingFacts, Snapshot, TailFacts, snapshot, track_key
from edge_agent.errors import LoadError
from edgemodel.api import ConditionStatus, ModelAssignment, ModelPhase, ModelState, get_condition
from edgemodel.retry import Backoff

SHA = {n: f"{n:x}" * 64 for n in range(1, 10)}
CLOUD = "https://cloud.example:9443"


def assignment(name: str = "m", revision: int = 1, sha: int = 1, role: str = "full", namespace: str = "default",
               split: dict[str, Any] | None = None, **extra: Any) -> ModelAssignment:  # fmt: skip
    base = f"http://store/{namespace}/{name}/{revision}"
    file = {"full": "model-cpu.onnx", "head": "head.onnx", "tail": "tail.onnx"}[role]
    fields: dict[str, Any] = {"name": name, "namespace": namespace, "revision": revision, "artifactUri": f"{base}/{file}",
                              "sha256": SHA[sha], "manifestUri": f"{base}/manifest.json", "signature": "c2ln",
                              "role": role, **extra}  # fmt: skip
    if split is not None:
        fields["split"] = split
    return ModelAssignment.model_validate(fields)


def head(revision: int = 1, **split: Any) -> ModelAssignment:
    return assignment(revision=revision, sha=2, role="head", split={"cut": "h", "cloudUrl": CLOUD, **split})


def tail(revision: int = 1, namespace: str = "default", sha: int = 3, cut: str = "h") -> ModelAssignment:
    return assignment(revision=revision, sha=sha, role="tail", namespace=namespace, split={"cut": cut})


def facts(a: ModelAssignment, state: ModelPhase = ModelPhase.READY, failures: int = 0, retry_at: float | None = None,
          busy: bool = False) -> ModelFacts:  # fmt: skip
    return ModelFacts(a, state, failures, retry_at, busy)


def serving_for(a: ModelAssignment, provider: str = "CPUExecutionProvider") -> ServingFacts:
    return ServingFacts(str(a.revision), repr(decide.load_key(a)), provider)


def snap(*models: ModelFacts, serving: dict[str, ServingFacts] | None = None, tails: dict[Any, TailFacts] | None = None,
         loaded: tuple[str, ...] = (), split_port: int | None = None, now: float = 100.0) -> Snapshot:  # fmt: skip
    return snapshot(now, models, serving or {}, tails or {}, loaded, split_port)


# -- a new desired set -----------------------------------------------------------------------------
def test_a_new_assignment_starts_it() -> None:
    a = assignment()
    plan = decide.plan_assignment(snap(), [a])
    assert plan.actions == [Start(a)]
    assert list(plan.desired) == ["m"]


def test_the_same_assignment_again_changes_nothing() -> None:
    a = assignment()
    plan = decide.plan_assignment(snap(facts(a), serving={"m": serving_for(a)}), [a])
    assert plan.actions == []
    assert plan.desired == {"m": a}


def test_a_new_revision_starts_while_the_old_one_keeps_serving() -> None:
    old, new = assignment(revision=1), assignment(revision=2, sha=2)
    plan = decide.plan_assignment(snap(facts(old), serving={"m": serving_for(old)}), [new])
    assert plan.actions == [Start(new)]  # no Unload: the swap replaces revision 1 once revision 2 is warm


def test_a_superseded_revision_that_never_served_forgets_its_state_metric() -> None:
    r1, r2, r3 = assignment(revision=1), assignment(revision=2, sha=2), assignment(revision=3, sha=3)
    plan = decide.plan_assignment(
        snap(facts(r2, ModelPhase.DOWNLOADING), serving={"m": serving_for(r1)}), [r3]
    )
    assert plan.actions == [Forget("default", "m", 2), Start(r3)]


def test_a_changed_setting_of_the_same_revision_restarts_it() -> None:
    a = assignment()
    gpu = assignment(accelerator="gpu")
    plan = decide.plan_assignment(snap(facts(a), serving={"m": serving_for(a)}), [gpu])
    assert plan.actions == [Start(gpu)]


def test_unassigned_models_and_tails_are_taken_out() -> None:
    a, t = assignment(name="gone"), tail()
    plan = decide.plan_assignment(snap(facts(a), facts(t), split_port=9443), [])
    assert plan.actions == [Unload(a), RemoveTail(t)]
    assert plan.desired == {}


def test_duplicate_entries_are_ignored_after_the_first() -> None:
    first, second = assignment(revision=1), assignment(revision=2, sha=2)
    t1, t1_again = tail(), tail(sha=4)
    plan = decide.plan_assignment(snap(), [first, second, t1, t1_again])
    assert plan.actions == [
        Ignore(second, "assignment"),
        Ignore(t1_again, "tail revision 1"),
        Start(first),
        Start(t1),
    ]


def test_tail_revisions_are_tracked_apart_so_a_new_one_leaves_the_old_registered() -> None:
    t1, t2 = tail(revision=1), tail(revision=2, sha=4)
    plan = decide.plan_assignment(snap(facts(t1), split_port=9443, tails={("default", "m", 1): TailFacts(SHA[3], "h")}),
                                  [t1, t2])  # fmt: skip
    assert plan.actions == [Start(t2)]
    assert track_key(t1) != track_key(t2)
    dropped = decide.plan_assignment(snap(facts(t1), facts(t2), split_port=9443), [t2])
    assert dropped.actions == [RemoveTail(t1)]


# -- where realising one entry starts --------------------------------------------------------------
def test_an_entry_the_serving_version_was_loaded_for_is_satisfied() -> None:
    a = assignment()
    step = decide.first_step(snap(serving={"m": serving_for(a, "CUDAExecutionProvider")}), a)
    assert step == Satisfied("serving revision 1 on CUDAExecutionProvider")


def test_an_entry_with_another_load_key_is_fetched() -> None:
    a = assignment()
    other = assignment(batching={"enabled": True, "maxBatchSize": 8})
    assert decide.first_step(snap(serving={"m": serving_for(other)}), a) == Fetch()
    assert decide.first_step(snap(), a) == Fetch()


def test_a_registered_tail_with_the_same_bytes_and_cut_is_satisfied() -> None:
    t = tail()
    loaded = {("default", "m", 1): TailFacts(SHA[3], "h")}
    assert isinstance(decide.first_step(snap(tails=loaded, split_port=9443), t), Satisfied)
    assert (
        decide.first_step(snap(tails={("default", "m", 1): TailFacts(SHA[3], "other")}, split_port=9443), t)
        == Fetch()
    )


def test_a_pipeline_stage_whose_next_stage_moved_is_registered_again() -> None:
    t = assignment(sha=3, role="tail", split={"cut": "h", "nextUrl": "https://b:8443", "nextCut": "k"})
    same = {("default", "m", 1): TailFacts(SHA[3], "h", "https://b:8443", "k")}
    moved = {("default", "m", 1): TailFacts(SHA[3], "h", "https://c:8443", "k")}
    plain = {("default", "m", 1): TailFacts(SHA[3], "h")}
    assert isinstance(decide.first_step(snap(tails=same, split_port=9443), t), Satisfied)
    assert decide.first_step(snap(tails=moved, split_port=9443), t) == Fetch()
    assert decide.first_step(snap(tails=plain, split_port=9443), t) == Fetch(), "a last stage that became a middle one"


@pytest.mark.parametrize(
    ("entry", "split_port", "reason"),
    [
        (tail(), None, "SplitServerDisabled"),
        (head(cloudUrl=""), None, "SplitInvalid"),
        (head(fullArtifactUri="http://store/default/m/1/model-cpu.onnx"), None, "SplitInvalid"),
        (assignment(role="head"), None, "SplitInvalid"),
        (assignment(role="tail"), 9443, "SplitInvalid"),
    ],
)
def test_entries_this_agent_cannot_serve_are_refused_before_any_download(entry: ModelAssignment, split_port: int | None,
                                                                          reason: str) -> None:  # fmt: skip
    step = decide.first_step(snap(split_port=split_port), entry)
    assert isinstance(step, Refuse)
    assert step.error.reason == reason
    assert not step.error.retryable


def test_a_tail_of_the_same_name_and_revision_from_another_namespace_conflicts() -> None:
    registered = {("team-a", "m", 1): TailFacts(SHA[3], "h")}
    step = decide.first_step(snap(tails=registered, split_port=9443), tail(namespace="team-b"))
    assert isinstance(step, Refuse)
    assert step.error.reason == "TailConflict"
    assert "namespace team-a" in step.error.message


def test_a_head_with_its_cloud_url_and_whole_model_is_fetched() -> None:
    h = head(fullArtifactUri="http://store/default/m/1/model-cpu.onnx", fullSha256=SHA[1])
    assert decide.first_step(snap(), h) == Fetch()


# -- failures, retries and backoff -----------------------------------------------------------------
BACKOFF = Backoff(first=4.0, cap=300.0, jitter=0.0)


def test_a_failed_download_is_retried_with_growing_backoff_up_to_the_cap() -> None:
    error = StepFailed("DownloadFailed", "GET http://store/m answered 503 (after 3 attempts)", retryable=True)
    delays = []
    failures = 0
    for _ in range(9):
        outcome = decide.failure(error, failures, 1, None, BACKOFF)
        failures = outcome.failures
        delays.append(outcome.retry_in)
    assert delays == [4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert outcome.reason == "DownloadFailed"
    assert outcome.message.endswith("; retrying in 300 s")
    assert outcome.counts_as_artifact_failure


def test_the_default_model_backoff_keeps_the_old_schedule_within_its_jitter() -> None:
    backoff = decide.model_backoff(2.0)
    rng = random.Random(7)
    for failures, base in [(1, 4.0), (2, 8.0), (3, 16.0), (7, 256.0), (8, 300.0), (30, 300.0)]:
        delay = decide.failure(
            StepFailed("Internal", "x", retryable=True), failures - 1, 1, None, backoff, rng
        ).retry_in
        assert delay is not None
        assert base * 0.9 <= delay <= min(300.0, base * 1.1)


def test_retries_come_due_at_their_time_and_not_while_work_runs() -> None:
    waiting = facts(assignment(name="a"), ModelPhase.FAILED, 1, retry_at=150.0)
    due = facts(assignment(name="b"), ModelPhase.FAILED, 2, retry_at=90.0)
    busy = facts(assignment(name="c"), ModelPhase.FAILED, 1, retry_at=50.0, busy=True)
    final = facts(assignment(name="d"), ModelPhase.FAILED, 1, retry_at=None)
    ready = facts(assignment(name="e"), ModelPhase.READY, 0, retry_at=10.0)
    assert decide.retries_due(snap(waiting, due, busy, final, ready, now=100.0)) == ["b"]
    assert decide.retries_due(snap(waiting, due, busy, final, ready, now=200.0)) == ["a", "b"]


@pytest.mark.parametrize(
    "error",
    [
        StepFailed("SignatureInvalid", "the signature of the manifest does not verify"),
        StepFailed("ManifestMismatch", "the signed manifest is for revision 7"),
        StepFailed("DigestMismatch", "the signed manifest gives another sha256"),
    ],
)
def test_a_trust_failure_is_final_and_counted(error: StepFailed) -> None:
    outcome = decide.failure(error, 0, 2, None, BACKOFF)
    assert outcome.retry_in is None
    assert "retrying" not in outcome.message
    assert outcome.counts_as_artifact_failure
    assert outcome.reason == error.reason


def test_the_cloud_or_store_unreachable_keeps_the_older_revision_serving() -> None:
    error = StepFailed("DownloadFailed", "GET http://store/m/2 failed: ClientConnectorError", retryable=True)
    outcome = decide.failure(error, 0, 2, "1", BACKOFF)
    assert "; revision 1 keeps serving; retrying in 4 s" in outcome.message
    # Losing the API server brings no new spec: nothing the agent serves is unloaded.
    a = assignment()
    assert decide.plan_assignment(snap(facts(a), serving={"m": serving_for(a)}), [a]).actions == []


def test_a_failure_of_the_serving_revision_itself_does_not_claim_it_keeps_serving() -> None:
    outcome = decide.failure(StepFailed("LoadFailed", "cannot load"), 0, 1, "1", BACKOFF)
    assert "keeps serving" not in outcome.message
    assert not outcome.counts_as_artifact_failure


def test_gpu_unavailable_without_fallback_is_a_final_failure() -> None:
    error = decide.as_step_failure(LoadError("GpuUnavailable", "no GPU execution provider loads here"))
    assert error is not None
    assert (error.reason, error.retryable) == ("GpuUnavailable", False)
    assert decide.failure(error, 0, 1, None, BACKOFF).retry_in is None


def test_gpu_unavailable_with_fallback_serves_on_cpu_and_says_so() -> None:
    gpu = assignment(accelerator="gpu", gpuFallbackToCpu=True)
    assert decide.ready_message(gpu, "CPUExecutionProvider") == (
        "serving revision 1 on CPUExecutionProvider (no GPU provider loads here; fell back to CPU per gpuFallbackToCpu)"
    )
    assert decide.ready_message(gpu, "CUDAExecutionProvider") == "serving revision 1 on CUDAExecutionProvider"
    assert (
        decide.ready_message(assignment(), "CPUExecutionProvider")
        == "serving revision 1 on CPUExecutionProvider"
    )


def test_a_head_says_where_it_is_cut_and_whether_it_can_fall_back() -> None:
    message = decide.ready_message(head(), "CPUExecutionProvider", "h", local_fallback=True)
    assert message == (f"serving revision 1 on CPUExecutionProvider; split at 'h', tail at {CLOUD}, "
                       "the whole model here for a local fallback")  # fmt: skip


def test_the_status_says_when_runs_overlap_on_a_one_thread_session() -> None:
    assert decide.ready_message(assignment(), "CPUExecutionProvider", overlapping_runs=2) == (
        "serving revision 1 on CPUExecutionProvider; up to 2 runs at once (a one-thread session for overlapping requests)"
    )
    assert decide.ready_message(assignment(), "CPUExecutionProvider", overlapping_runs=1) == "serving revision 1 on CPUExecutionProvider"


def test_unexpected_errors_become_internal_and_are_retried() -> None:
    assert decide.as_step_failure(RuntimeError("boom")) is None
    error = decide.internal_failure(RuntimeError("boom"))
    assert (error.reason, error.message, error.retryable) == ("Internal", "RuntimeError: boom", True)


# -- the cache -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("digest_ok", "vouched", "use"),
    [(True, True, CacheUse.USE), (True, False, CacheUse.VERIFY_MANIFEST), (False, True, CacheUse.REFETCH),
     (False, False, CacheUse.REFETCH)],
)  # fmt: skip
def test_a_cached_copy_is_used_only_when_intact_and_vouched_for(
    digest_ok: bool, vouched: bool, use: CacheUse
) -> None:
    assert decide.cache_use(digest_ok, vouched) is use


def test_a_download_is_bounded_by_the_signed_size_or_the_cache() -> None:
    assert decide.download_bound("model-cpu.onnx", 1000, 10_000) == 1000
    assert decide.download_bound("model-cpu.onnx", None, 10_000) == 10_000  # older manifests have no sizes
    with pytest.raises(StepFailed) as info:
        decide.download_bound("model-cpu.onnx", 20_000, 10_000)
    assert info.value.reason == "DownloadFailed"
    assert "raise --cache-max-bytes" in info.value.message


def test_the_cache_keeps_assigned_loaded_and_registered_bytes() -> None:
    h = head(fullArtifactUri="http://store/default/m/1/model-cpu.onnx", fullSha256=SHA[5])
    t = tail(sha=3)
    keep = decide.pinned(
        snap(facts(h), facts(t), tails={("default", "x", 9): TailFacts(SHA[6], "c")}, loaded=(SHA[7],))
    )
    assert keep == {SHA[2], SHA[5], SHA[3], SHA[6], SHA[7]}


# -- the snapshot and the agent's conditions -------------------------------------------------------
def test_a_snapshot_cannot_be_changed_by_the_decisions() -> None:
    s = snap(facts(assignment()), serving={"m": serving_for(assignment())})
    with pytest.raises(TypeError):
        s.models["x"] = facts(assignment(name="x"))  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.now = 5.0  # type: ignore[misc]


def test_agent_conditions_report_models_and_the_lease() -> None:
    ready = ModelState(name="a", revision=1, state=ModelPhase.READY)
    failed = ModelState(name="b", revision=2, state=ModelPhase.FAILED, reason="DownloadFailed")
    tail_pending = ModelState(name="c", revision=3, state=ModelPhase.DOWNLOADING, role="tail")
    conditions = decide.agent_conditions([], [ready, failed, tail_pending], LeaseFacts(False, "Lease default/n", "503"), 10.0,
                                         now="2026-01-01T00:00:00Z")  # fmt: skip
    ready_c = get_condition(conditions, "Ready")
    assert ready_c is not None
    assert (ready_c.status, ready_c.reason) == (ConditionStatus.FALSE, "ModelsNotReady")
    assert ready_c.message == "b: Failed DownloadFailed, c (tail of revision 3): Downloading"
    lease_c = get_condition(conditions, "LeaseRenewed")
    assert lease_c is not None
    assert (lease_c.status, lease_c.message) == (ConditionStatus.FALSE, "Lease default/n: 503")
    later = decide.agent_conditions(
        conditions, [ready], LeaseFacts(True, "Lease default/n"), 10.0, now="2026-01-01T00:01:00Z"
    )
    assert [(c.type, c.status, c.last_transition_time) for c in later] == [
        ("Ready", ConditionStatus.TRUE, "2026-01-01T00:01:00Z"),
        ("LeaseRenewed", ConditionStatus.TRUE, "2026-01-01T00:01:00Z"),
    ]
    assert (
        decide.agent_conditions(later, [ready], None, 10.0)[1] == later[1]
    )  # no lease facts: left as it was


def test_a_spec_that_cannot_be_applied_is_retried_with_backoff() -> None:
    backoff = Backoff(first=1.0, cap=300.0, jitter=0.0)
    assert [decide.apply_retry_delay(n, backoff) for n in (1, 2, 3, 9, 10, 20)] == [
        1.0,
        2.0,
        4.0,
        256.0,
        300.0,
        300.0,
    ]


@pytest.mark.parametrize(
    ("fingerprint", "applied", "created", "serving_saved", "change"),
    [
        (b"a", b"a", None, True, decide.SpecChange.UNCHANGED),
        (b"b", b"a", None, True, decide.SpecChange.APPLY),
        (b"{}", None, b"{}", True, decide.SpecChange.OWN_EMPTY_SPEC),
        (b"{}", None, b"{}", False, decide.SpecChange.APPLY),  # nothing saved: the empty spec is the truth
        (b"{}", None, None, True, decide.SpecChange.APPLY),  # an empty spec the operator wrote unassigns all
    ],
)
def test_which_watched_specs_are_applied(
    fingerprint: bytes,
    applied: bytes | None,
    created: bytes | None,
    serving_saved: bool,
    change: decide.SpecChange,
) -> None:
    assert decide.spec_change(fingerprint, applied, created, serving_saved) is change
