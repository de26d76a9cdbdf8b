"""One ONNX model version in ONNX Runtime: ``load()`` (provider selection + warm-up), ``predict()``.

Blocking by design: the data plane calls these from its inference thread pool, never from the
event loop. Metadata (names, datatypes, shapes) is computed once at load so that requests
only compare against precomputed values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import providers as providers_mod
from edge_agent.datatypes import ORT_TO_V2, V2_TO_NUMPY
from edge_agent.errors import LoadError, first_line
from edge_agent.runplan import REPEATS, RunPlan, fits_budget, interleaved, prefer_batching, prefer_narrow

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class TensorMeta:
    """A model input or output as the Open Inference Protocol describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 for a dynamic dimension."""

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ModelOptions:
    """How a model version is loaded and run."""

    accelerator: str = "auto"
    gpu_fallback_to_cpu: bool = True
    intra_op_threads: int = 1
    warmup_runs: int = 3
    allow_spinning: bool = False
    """ONNX Runtime threads spin while waiting for work: lower latency, burns CPU on shared cores."""
    small_model_ms: float = 1.0
    """Models whose warm-up inference takes less than this get one intra-op thread: waking the
    thread pool costs more than it saves (measured: 13 µs vs 28 µs on the digits CNN)."""
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan_runs: bool = False
    """Heavy CPU models: choose narrow runs and batching by measurement at load (``edge_agent.runplan``);
    the server sets it unless --threads or --workers were given."""
    plan_batch_rows: int = 8
    """Rows of the batched run the batching measurement times (the batch size it would form)."""


SessionFactory = Callable[[list[str]], Any]


def _dim(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else -1


class OnnxModel:
    """A model file and, once ``load()`` ran, its ONNX Runtime session and metadata."""

    def __init__(
        self,
        name: str,
        version: str,
        source: Path | bytes,
        options: ModelOptions | None = None,
        sha256: str = "",
        session_factory: SessionFactory | None = None,
        available_providers: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.source = source
        self.options = options or ModelOptions()
        self.sha256 = sha256
        self._session_factory = session_factory
        self._available = available_providers
        self.session: Any = None
        self.provider = ""
        self.provider_notes: list[str] = []
        self.inputs: list[TensorMeta] = []
        self.outputs: list[TensorMeta] = []
        self.input_by_name: dict[str, TensorMeta] = {}
        self.output_names: list[str] = []
        self.intra_op_threads = self.options.intra_op_threads
        self.load_seconds = 0.0
        self.warmup_seconds: float | None = None
        """Median warm-up inference time; None when no warm-up ran."""
        self.warmup_elements = 0
        """Input elements of the warm-up request (to scale its time to other request sizes)."""
        self.narrow_session: Any = None
        """A one-thread session that runs overlapping the wide one use (None: one session only)."""
        self.plan = RunPlan()
        self._running = 0
        self._running_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------
    def _default_factory(self, intra_op_threads: int) -> SessionFactory:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, intra_op_threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.allow_spinning else "0")
        source = str(self.source) if isinstance(self.source, Path) else self.source
        provider_options = self.options.provider_options

        def create(providers: list[str]) -> Any:
            return ort.InferenceSession(
                source,
                sess_options=opts,
                providers=providers,
                provider_options=[provider_options.get(p, {}) for p in providers],
            )

        return create

    def load(self) -> None:
        """Create the session on the best provider that loads, read metadata, warm up."""
        started = time.perf_counter()
        if self._available is None:
            import onnxruntime as ort

            self._available = ort.get_available_providers()
        threads = self.options.intra_op_threads
        self._create_session(threads)
        self.inputs = [self._meta(i, "input") for i in self.session.get_inputs()]
        self.outputs = [self._meta(o, "output") for o in self.session.get_outputs()]
        self.input_by_name = {t.name: t for t in self.inputs}
        self.output_names = [t.name for t in self.outputs]
        self.warmup()
        small = self.warmup_seconds is not None and self.warmup_seconds * 1e3 < self.options.small_model_ms
        if small and threads > 1 and self._session_factory is None and self.provider == providers_mod.CPU:
            multi_session, multi_time = self.session, self.warmup_seconds
            self._create_session(1)
            self.warmup()
            if multi_time is not None and self.warmup_seconds is not None and multi_time < self.warmup_seconds:
                self.session, self.warmup_seconds = multi_session, multi_time
            else:
                self.intra_op_threads = 1
        if self.options.plan_runs:
            if small:
                self.plan = RunPlan(note=f"warm-up below {self.options.small_model_ms:g} ms: nothing to gain")
            elif self.warmup_seconds is None or self.provider != providers_mod.CPU:
                self.plan = RunPlan(note="no warm-up time to plan from" if self.warmup_seconds is None else f"runs on {self.provider}")
            else:
                self.plan = self._plan_runs()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "Loaded model %s version %s on %s with %d intra-op threads in %.3f s (warm-up median %s)%s",
            self.name,
            self.version,
            self.provider,
            self.intra_op_threads,
            self.load_seconds,
            f"{self.warmup_seconds * 1e3:.3f} ms" if self.warmup_seconds is not None else "n/a",
            f"; run plan: {self.plan.describe()}" if self.options.plan_runs else "",
        )

    @property
    def run_threads(self) -> int:
        """Intra-op threads of a run that overlaps others (1 with a narrow session)."""
        return 1 if self.narrow_session is not None else self.intra_op_threads

    def _plan_runs(self) -> RunPlan:
        """Measure (interleaved) whether narrow runs and batching pay off for this model; keep what wins."""
        threads = self.intra_op_threads
        wide = self.session
        feeds = self.warmup_feeds()
        assert self.warmup_seconds is not None
        run_s = self.warmup_seconds
        wide_ms = narrow_ms = None
        notes: list[str] = []
        if threads > 1 and fits_budget(run_s, REPEATS * (1 + threads) + threads * self.options.warmup_runs):
            factory = self._session_factory or self._default_factory(1)
            try:
                narrow = factory([providers_mod.CPU])
                for _ in range(max(1, self.options.warmup_runs)):
                    narrow.run(None, feeds)
            except Exception as exc:  # e.g. no memory for the weights a second time: serve with the wide session
                log.warning("Run plan of %s:%s: no one-thread session (%s)", self.name, self.version, str(exc).strip()[:200])
                notes.append("a one-thread session failed to load")
            else:
                wide_s, narrow_s = interleaved(lambda: wide.run(None, feeds), lambda: narrow.run(None, feeds))
                wide_ms, narrow_ms = float(np.median(wide_s)) * 1e3, float(np.median(narrow_s)) * 1e3
                if prefer_narrow(wide_s, narrow_s, threads):
                    self.narrow_session = narrow
                    run_s = narrow_ms / 1e3
        elif threads > 1:
            notes.append("too slow to measure narrow runs")
        concurrent = self.narrow_session or wide
        rows = self.options.plan_batch_rows
        single_ms = batch_row_ms = None
        batching = False
        if not self.batchable or rows <= 1:
            notes.append("not batchable")
        elif fits_budget(run_s, (REPEATS + 1) * (rows + 1)):
            batch = {k: np.repeat(v, rows, axis=0) for k, v in feeds.items()}
            try:
                concurrent.run(None, batch)
            except Exception as exc:  # a model whose graph fixes the batch size despite its dynamic shapes
                notes.append(f"a batched run failed: {first_line(exc, 200)}")
            else:
                single_s, batch_s = interleaved(lambda: concurrent.run(None, feeds), lambda: concurrent.run(None, batch))
                single_ms, batch_row_ms = float(np.median(single_s)) * 1e3, float(np.median(batch_s)) * 1e3 / rows
                batching = prefer_batching(single_s, batch_s, rows)
        else:
            notes.append("too slow to measure batching")
        return RunPlan(
            narrow_runs=self.narrow_session is not None, batching=batching, wide_ms=wide_ms, narrow_ms=narrow_ms,
            batch_row_ms=batch_row_ms, single_ms=single_ms, note="; ".join(notes),
        )  # fmt: skip

    def _create_session(self, intra_op_threads: int) -> None:
        factory = self._session_factory or self._default_factory(intra_op_threads)
        assert self._available is not None
        selection = providers_mod.select(
            self.options.accelerator, self._available, factory, self.options.gpu_fallback_to_cpu
        )
        self.session = selection.session
        self.provider = selection.provider
        self.provider_notes = selection.tried
        self.intra_op_threads = intra_op_threads

    def _meta(self, node: Any, kind: str) -> TensorMeta:
        datatype = ORT_TO_V2.get(node.type)
        if datatype is None:
            raise LoadError(
                "UnsupportedModel",
                f"{kind} {node.name!r} has type {node.type}, which the Open Inference Protocol cannot carry; "
                "export the model with float, int or bool tensors",
            )
        return TensorMeta(name=node.name, datatype=datatype, shape=tuple(_dim(d) for d in node.shape))

    @property
    def batchable(self) -> bool:
        """Whether requests can be stacked along the first dimension (dynamic on every tensor)."""
        return bool(self.inputs) and all(t.shape and t.shape[0] == -1 for t in [*self.inputs, *self.outputs])

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """Zero inputs with dynamic dimensions set to 1."""
        feeds: dict[str, np.ndarray] = {}
        for t in self.inputs:
            shape = tuple(d if d >= 0 else 1 for d in t.shape)
            if t.datatype == "BYTES":
                feeds[t.name] = np.full(shape, "", dtype=object)
            else:
                feeds[t.name] = np.zeros(shape, dtype=t.dtype)
        return feeds

    def warmup(self) -> None:
        """Run a few inferences so the first request does not pay for lazy initialisation."""
        if self.options.warmup_runs <= 0 or not self.inputs:
            return
        feeds = self.warmup_feeds()
        guessed = any(d == -1 for t in self.inputs for d in t.shape[1:])
        times: list[float] = []
        try:
            for _ in range(self.options.warmup_runs):
                start = time.perf_counter()
                self.session.run(None, feeds)
                times.append(time.perf_counter() - start)
        except Exception as exc:
            if guessed:  # dynamic non-batch dimensions set to 1 may simply be invalid for this model
                log.warning("Warm-up of %s:%s skipped: inputs with guessed shapes failed (%s)", self.name, self.version, exc)
                return
            raise LoadError("LoadFailed", f"warm-up inference on zeros failed: {str(exc).splitlines()[0]}") from exc
        self.warmup_seconds = float(np.median(times))
        self.warmup_elements = sum(int(a.size) for a in feeds.values())

    # -- inference ---------------------------------------------------------------------------
    def predict(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> list[np.ndarray]:
        """Run the model; outputs in the order of ``output_names`` (all outputs when None).

        With a narrow session, a run that starts while another is in flight uses it (a lone run keeps
        the wide session and its latency).
        """
        narrow = self.narrow_session
        if narrow is None:
            result: list[np.ndarray] = self.session.run(output_names, feeds)
            return result
        with self._running_lock:
            busy = self._running
            self._running += 1
        try:
            result = (narrow if busy else self.session).run(output_names, feeds)
        finally:
            with self._running_lock:
                self._running -= 1
        return result

    def unload(self) -> None:
        """Drop the session (ONNX Runtime frees it once no thread still runs on it)."""
        self.session = None
        self.narrow_session = None
