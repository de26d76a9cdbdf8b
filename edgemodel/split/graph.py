"""Cut an ONNX graph into a head (inputs -> cut tensor) and a tail (cut tensor -> outputs).

A tensor is a *candidate cut* when it dominates the rest of the graph: once it is computed, the
tail needs nothing else that depends on the graph inputs (initializers and constant subgraphs do
not count, the tail carries its own copy). So a cut never falls inside a residual block, where
the skip connection would have to travel too. The check is done per tensor by walking the graph
backwards from the outputs, stopping at the cut: the cut is valid when that walk reaches no
graph input and no other tensor the head computes. Subgraph attributes (If/Loop/Scan bodies)
count their outer-scope references as inputs.

Head and tail keep the model's opset imports, IR version, producer, functions and metadata, and
record their role and cut in ``metadata_props`` (``edgemodel.split.role`` / ``.cut``). The head
keeps every graph input of the full model (the same request signature); the tail's only input is
the cut tensor under its original name.

Features are quantised for transfer by :mod:`edgemodel.split.codec` (per message, not inside the
graphs), so head and tail stay plain FP32 models that :func:`verify_split` can compare exactly;
each part can additionally be quantised on its own with :func:`quantize_split`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgemodel.errors import UserError
from edgemodel.split.runtime import DEFAULT_PROVIDERS, OrtPart

log = logging.getLogger(__name__)

META_ROLE = "edgemodel.split.role"
META_CUT = "edgemodel.split.cut"

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class CutCandidate:
    """A tensor at which the graph can be cut, in topological order (``index`` 0 is nearest the input)."""

    tensor: str
    index: int
    producer: str
    op_type: str
    dtype: str
    shape: tuple[int | str | None, ...]
    head_nodes: int
    tail_nodes: int

    def elements_per_sample(self) -> int | None:
        """Elements per sample (the first dimension is the batch), or None when a dimension is not static."""
        dims = self.shape[1:]
        if not self.shape or any(not isinstance(d, int) or d < 0 for d in dims):
            return None
        return int(np.prod([int(d) for d in dims if isinstance(d, int)], dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "index": self.index, "producer": self.producer, "opType": self.op_type,
                "dtype": self.dtype, "shape": list(self.shape), "headNodes": self.head_nodes,
                "tailNodes": self.tail_nodes}


@dataclass
class SplitModels:
    """Head and tail of one cut, as ONNX models."""

    head: onnx.ModelProto
    tail: onnx.ModelProto
    cut: CutCandidate

    def save(self, directory: Path, prefix: str = "") -> tuple[Path, Path]:
        """Write ``{prefix}head.onnx`` and ``{prefix}tail.onnx``; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        head, tail = directory / f"{prefix}head.onnx", directory / f"{prefix}tail.onnx"
        onnx.save_model(self.head, str(head))
        onnx.save_model(self.tail, str(tail))
        return head, tail


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs_diff: float
    max_abs_value: float


@dataclass(frozen=True)
class SplitVerification:
    """Result of :func:`verify_split`: the largest difference between head+tail and the whole model."""

    cut: str
    samples: int
    max_abs_diff: float
    outputs: list[OutputDiff] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-4
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "samples": self.samples, "maxAbsDiff": self.max_abs_diff, "passed": self.passed,
                "rtol": self.rtol, "atol": self.atol,
                "outputs": [{"name": o.name, "maxAbsDiff": o.max_abs_diff, "maxAbsValue": o.max_abs_value}
                            for o in self.outputs]}


def load_model(model: onnx.ModelProto | str | Path | bytes) -> onnx.ModelProto:
    """An ONNX ``ModelProto`` from a proto, a path or serialized bytes."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_model_from_string(model)
    path = Path(model)
    if not path.is_file():
        raise UserError(f"model: {path} does not exist; pass the path of an .onnx file")
    return onnx.load_model(str(path))


def _subgraph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(_node_inputs(node))
        defined.update(o for o in node.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope names used by the node's subgraphs."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            names.extend(sorted(_subgraph_refs(sub)))
    return names


class _Graph:
    """Producers, dynamic (input-dependent) tensors and types of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.inputs_of = [_node_inputs(n) for n in self.nodes]
        initializers = {i.name for i in graph.initializer}
        self.real_inputs = [i.name for i in graph.input if i.name not in initializers]
        self.outputs = [o.name for o in graph.output]
        self.producer: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = index
        self.dynamic: set[str] = set(self.real_inputs)
        for index, node in enumerate(self.nodes):
            if any(i in self.dynamic for i in self.inputs_of[index]):
                self.dynamic.update(o for o in node.output if o)
        self.live = self._ancestors(self.outputs, stop=set())
        self.types = self._value_types()

    def _value_types(self) -> dict[str, onnx.ValueInfoProto]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception as exc:  # shape inference is best effort (custom ops, > 2 GB)
            log.warning("Skipped ONNX shape inference (%s); using the value_info already in the model", exc)
            inferred = self.model
        graph = inferred.graph
        infos = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
        for init in self.model.graph.initializer:
            infos.setdefault(init.name, helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        return infos

    def _ancestors(self, tensors: Sequence[str], stop: set[str]) -> set[int]:
        """Indices of nodes needed to compute ``tensors`` when ``stop`` tensors are given."""
        seen: set[int] = set()
        stack = [t for t in tensors if t not in stop]
        visited: set[str] = set()
        while stack:
            tensor = stack.pop()
            if tensor in visited:
                continue
            visited.add(tensor)
            index = self.producer.get(tensor)
            if index is None or index in seen:
                continue
            seen.add(index)
            stack.extend(i for i in self.inputs_of[index] if i not in stop)
        return seen

    def crossing(self, tensor: str) -> tuple[set[int], set[int], list[str]]:
        """(head nodes, tail nodes, tensors other than ``tensor`` the tail would need from the head side)."""
        head = self._ancestors([tensor], stop=set())
        head_tensors = {o for i in head for o in self.nodes[i].output if o} | set(self.real_inputs)
        frontier = {t for t in head_tensors if t in self.dynamic} | {tensor}
        tail = self._ancestors(self.outputs, stop=frontier)
        needed: list[str] = []
        for index in sorted(tail):
            for name in self.inputs_of[index]:
                if name != tensor and name in frontier and name not in needed:
                    needed.append(name)
        for name in self.outputs:
            if name != tensor and name in self.dynamic and self.producer.get(name) not in tail and name not in needed:
                needed.append(name)
        return head, tail, needed

    def shape_and_dtype(self, tensor: str) -> tuple[tuple[int | str | None, ...], str] | None:
        info = self.types.get(tensor)
        if info is None or not info.type.HasField("tensor_type") or info.type.tensor_type.elem_type == 0:
            return None
        ttype = info.type.tensor_type
        dtype = str(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        if not ttype.HasField("shape"):
            return (), dtype
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim)
        return dims, dtype


def _iter_candidates(g: _Graph) -> Iterator[CutCandidate]:
    outputs = set(g.outputs)
    order = 0
    for index, node in enumerate(g.nodes):
        if index not in g.live:
            continue
        for tensor in node.output:
            if not tensor or tensor in outputs or tensor not in g.dynamic:
                continue
            head, tail, needed = g.crossing(tensor)
            if needed or not tail:
                continue
            typed = g.shape_and_dtype(tensor)
            shape, dtype = typed if typed else ((), "unknown")
            yield CutCandidate(tensor, order, node.name or f"{node.op_type}_{index}", node.op_type, dtype, shape,
                               len(head), len(tail))
            order += 1


def find_cut_candidates(model: onnx.ModelProto | str | Path | bytes) -> list[CutCandidate]:
    """Every tensor that dominates the rest of the graph, in topological order (input side first)."""
    return list(_iter_candidates(_Graph(load_model(model))))


def resolve_cut(model: onnx.ModelProto | str | Path | bytes, name: str) -> CutCandidate:
    """The candidate for a manual cut given as a tensor name or as a node (layer) name.

    A node name stands for the node's single output. A name that exists but is not a valid cut
    raises a :class:`UserError` saying which tensors would have to cross as well.
    """
    proto = load_model(model)
    g = _Graph(proto)
    tensor = name
    if name not in g.producer and name not in g.real_inputs:
        nodes = [n for n in g.nodes if n.name == name]
        if not nodes:
            raise UserError(f"spec.split.cut: {name!r} is neither a tensor nor a node of the model; "
                            f"valid cuts are {_examples(proto)}")
        outputs = [o for o in nodes[0].output if o]
        if len(outputs) != 1:
            raise UserError(f"spec.split.cut: node {name!r} has {len(outputs)} outputs; name one of its tensors "
                            f"{outputs} instead")
        tensor = outputs[0]
    for candidate in _iter_candidates(g):
        if candidate.tensor == tensor:
            return candidate
    if tensor in g.real_inputs or tensor in g.outputs:
        reason = "it is a graph input or output (use edge-only or cloud-only instead)"
    elif tensor not in g.dynamic:
        reason = "it does not depend on the model inputs"
    else:
        needed = g.crossing(tensor)[2]
        reason = (f"the tail would also need {needed[:3]} from the head side "
                  f"(a skip connection or a second branch crosses this cut)")
    raise UserError(f"spec.split.cut: {name!r} cannot be a cut: {reason}; valid cuts are {_examples(proto)}")


def _examples(model: onnx.ModelProto, limit: int = 6) -> str:
    names = [c.tensor for c in find_cut_candidates(model)]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return f"[{shown}]" if names else "[] (this graph has no single-tensor cut)"


def _part(g: _Graph, node_indices: set[int], inputs: list[str], outputs: list[str], role: str,
          cut: str) -> onnx.ModelProto:
    model = g.model
    nodes = [g.nodes[i] for i in sorted(node_indices)]
    used = {name for i in node_indices for name in (*g.inputs_of[i], *g.nodes[i].output)}
    initializers = [init for init in model.graph.initializer if init.name in used and init.name not in inputs]
    io = set(inputs) | set(outputs)
    value_info = [v for v in model.graph.value_info if v.name in used and v.name not in io]

    def info(name: str) -> onnx.ValueInfoProto:
        found = g.types.get(name)
        if found is None:
            raise UserError(f"spec.split.cut: the type of tensor {name!r} is unknown (ONNX shape inference could "
                            f"not infer it); export the model with value_info or pick another cut")
        return found

    graph = helper.make_graph(nodes, f"{model.graph.name or 'model'}_{role}", [info(i) for i in inputs],
                              [info(o) for o in outputs], initializer=initializers, value_info=value_info,
                              doc_string=model.graph.doc_string)
    part = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name=model.producer_name, producer_version=model.producer_version,
                             domain=model.domain, model_version=model.model_version,
                             doc_string=model.doc_string, functions=list(model.functions))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({META_ROLE: role, META_CUT: cut})
    helper.set_model_props(part, meta)
    onnx.checker.check_model(part)
    return part


def split_model(model: onnx.ModelProto | str | Path | bytes, cut: str | CutCandidate) -> SplitModels:
    """Cut ``model`` at ``cut`` (a candidate, a tensor name or a node name) into head and tail."""
    proto = load_model(model)
    candidate = cut if isinstance(cut, CutCandidate) else resolve_cut(proto, cut)
    g = _Graph(proto)
    head_nodes, tail_nodes, needed = g.crossing(candidate.tensor)
    if needed:  # a CutCandidate from another model
        raise UserError(f"spec.split.cut: {candidate.tensor!r} is not a valid cut of this model (needs {needed[:3]})")
    head = _part(g, head_nodes, g.real_inputs, [candidate.tensor], "head", candidate.tensor)
    tail = _part(g, tail_nodes, [candidate.tensor], g.outputs, "tail", candidate.tensor)
    return SplitModels(head, tail, candidate)


def as_feed_list(samples: Feeds | Sequence[Feeds]) -> list[Feeds]:
    """One feed dict or a sequence of them, as a non-empty list."""
    if isinstance(samples, Mapping):
        return [samples]
    listed = list(samples)
    if not listed:
        raise UserError("samples: pass at least one input dict ({input name: array}) to verify or profile with")
    return listed


def run_split_locally(head: OrtPart, tail: OrtPart, feeds: Feeds) -> dict[str, np.ndarray]:
    """Head then tail in this process (what the split deployment computes, minus the network)."""
    return tail.run(head.run(feeds))


def verify_split(model: onnx.ModelProto | str | Path | bytes, split: SplitModels,
                 samples: Feeds | Sequence[Feeds], rtol: float = 1e-4, atol: float = 1e-4,
                 providers: Sequence[str] = DEFAULT_PROVIDERS) -> SplitVerification:
    """Check that head+tail reproduce the whole model's outputs on ``samples``; record the max abs diff."""
    feeds_list = as_feed_list(samples)
    full = OrtPart(load_model(model).SerializeToString(), providers)
    head = OrtPart(split.head.SerializeToString(), providers)
    tail = OrtPart(split.tail.SerializeToString(), providers)
    worst: dict[str, tuple[float, float]] = {}
    passed = True
    for feeds in feeds_list:
        expected = full.run(feeds)
        got = run_split_locally(head, tail, feeds)
        for name, want in expected.items():
            have = got[name]
            if have.shape != want.shape:
                raise AssertionError(f"split output {name!r} has shape {have.shape}, the whole model {want.shape}")
            diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
            peak = float(np.max(np.abs(want))) if want.size else 0.0
            prev = worst.get(name, (0.0, 0.0))
            worst[name] = (max(prev[0], diff), max(prev[1], peak))
            passed = passed and bool(np.allclose(have, want, rtol=rtol, atol=atol))
    outputs = [OutputDiff(n, d, p) for n, (d, p) in worst.items()]
    result = SplitVerification(split.cut.tensor, len(feeds_list), max(d for d, _ in worst.values()),
                               outputs, rtol, atol, passed)
    log.info("Verified split at %s on %d samples: max abs diff %.3g (%s)", split.cut.tensor, len(feeds_list),
             result.max_abs_diff, "passed" if passed else "FAILED")
    return result


class _FeedsReader:
    """An ONNX Runtime ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._iter = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = next(self._iter, None)
        return dict(feeds) if feeds is not None else None


def quantize_part(model: onnx.ModelProto, calibration: Sequence[Feeds], per_channel: bool = True,
                  activation_type: str = "uint8") -> onnx.ModelProto:
    """Static INT8 QDQ quantisation of one part with onnxruntime.quantization (pre-processed first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise UserError("calibration: static quantisation of a split part needs at least one calibration sample")
    activations = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(activation_type)
    if activations is None:
        raise UserError(f"activation_type: {activation_type!r} is not uint8 or int8")

    class Reader(_FeedsReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="edgemodel-split-quant-") as tmp:
        src, pre, out = Path(tmp) / "part.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=activations, weight_type=QuantType.QInt8, per_channel=per_channel)
        quantized = onnx.load_model(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    meta["edgemodel.split.precision"] = "int8"
    del quantized.metadata_props[:]
    helper.set_model_props(quantized, meta)
    return quantized


def quantize_split(split: SplitModels, calibration: Sequence[Feeds], per_channel: bool = True,
                   activation_type: str = "uint8") -> SplitModels:
    """Quantise head and tail independently; the tail is calibrated on the FP32 head's features."""
    head_runner = OrtPart(split.head.SerializeToString())
    features = [head_runner.run(feeds) for feeds in calibration]
    log.info("Quantising head and tail of cut %s on %d calibration samples", split.cut.tensor, len(calibration))
    head = quantize_part(split.head, calibration, per_channel, activation_type)
    tail = quantize_part(split.tail, features, per_channel, activation_type)
    return SplitModels(head, tail, split.cut)


def random_inputs(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the model's input types (symbolic dimensions become ``batch``)."""
    rng = np.random.default_rng(seed)
    g = _Graph(model)
    feeds: dict[str, np.ndarray] = {}
    for name in g.real_inputs:
        typed = g.shape_and_dtype(name)
        if typed is None:
            raise UserError(f"samples: input {name!r} has no type in the model; pass sample inputs explicitly")
        shape, dtype = typed
        dims = [d if isinstance(d, int) and d > 0 else batch for d in shape]
        if np.issubdtype(np.dtype(dtype), np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (weights) as stored."""
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
