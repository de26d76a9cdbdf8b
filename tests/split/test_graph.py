"""Candidate cuts, head/tail extraction and numerical equivalence of head+tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemodel.errors import UserError
from edgemodel.split.graph import (
    META_CUT,
    META_ROLE,
    find_cut_candidates,
    quantize_split,
    resolve_cut,
    split_model,
    verify_split,
)
from edgemodel.split.runtime import OrtPart
from tests.split import models


def names(model: onnx.ModelProto) -> list[str]:
    return [c.tensor for c in find_cut_candidates(model)]


def test_every_tensor_of_a_chain_is_a_candidate_in_topological_order(chain: onnx.ModelProto) -> None:
    cuts = find_cut_candidates(chain)
    assert [c.tensor for c in cuts] == ["c1", "r1", "c2", "r2", "gap", "flat"]
    assert [c.index for c in cuts] == list(range(6))
    r1 = cuts[1]
    assert (r1.op_type, r1.dtype, r1.shape) == ("Relu", "float32", ("N", 4, 8, 8))
    assert r1.elements_per_sample() == 4 * 8 * 8
    assert r1.head_nodes == 2
    assert r1.tail_nodes == 5


def test_residual_block_is_never_cut_in_half(residual: onnx.ModelProto) -> None:
    assert names(residual) == ["stem", "stem_relu", "block_add", "block_relu", "gap", "flat"]


def test_cut_inside_the_residual_block_is_refused_naming_the_skip(residual: onnx.ModelProto) -> None:
    with pytest.raises(UserError, match=r"'ra' cannot be a cut: the tail would also need \['stem_relu'\]"):
        resolve_cut(residual, "ra")
    with pytest.raises(UserError, match="neither a tensor nor a node"):
        resolve_cut(residual, "no_such_layer")
    with pytest.raises(UserError, match="graph input or output"):
        resolve_cut(residual, "logits")


def test_a_node_name_stands_for_its_output(residual: onnx.ModelProto) -> None:
    assert resolve_cut(residual, "block_add").tensor == "block_add"
    assert resolve_cut(residual, "stem").tensor == "stem"  # node and tensor share the name
    assert resolve_cut(models.chain_model(), "relu1").tensor == "r1"  # node name -> its output tensor


def test_only_tensors_after_the_merge_dominate_both_inputs() -> None:
    model = models.two_input_model()
    assert names(model) == ["cat", "cat_scaled", "gap", "flat"]
    split = split_model(model, "cat")
    assert [i.name for i in split.head.graph.input] == ["x", "y"]
    assert [i.name for i in split.tail.graph.input] == ["cat"]
    result = verify_split(model, split, models.feeds(model, n=2))
    assert result.passed
    assert result.max_abs_diff <= 1e-5


@pytest.mark.parametrize("cut", ["stem_relu", "block_add", "block_relu", "gap", "flat"])
def test_head_plus_tail_reproduce_the_whole_model(residual: onnx.ModelProto, cut: str) -> None:
    split = split_model(residual, cut)
    result = verify_split(residual, split, models.feeds(residual, n=3, batch=2))
    assert result.passed, result
    assert result.samples == 3
    assert result.max_abs_diff <= 1e-5
    assert result.outputs[0].name == "logits"
    assert result.outputs[0].max_abs_value > 0.01  # the comparison is not between zeros


def test_parts_keep_opset_metadata_and_signature(residual: onnx.ModelProto, tmp_path: Path) -> None:
    split = split_model(residual, "block_relu")
    for part, role in ((split.head, "head"), (split.tail, "tail")):
        props = {p.key: p.value for p in part.metadata_props}
        assert props == {"owner": "split-tests", META_ROLE: role, META_CUT: "block_relu"}
        assert [(o.domain, o.version) for o in part.opset_import] == [("", models.OPSET)]
        assert part.ir_version == residual.ir_version
        assert part.producer_name == "edgemodel-tests"
        onnx.checker.check_model(part, full_check=True)
    assert [o.name for o in split.head.graph.output] == ["block_relu"]
    assert [o.name for o in split.tail.graph.output] == ["logits"]
    # The head carries only the weights it needs; the tail only its own.
    head_inits = {i.name for i in split.head.graph.initializer}
    tail_inits = {i.name for i in split.tail.graph.initializer}
    assert head_inits == {"stem.w", "stem.b", "convA.w", "convA.b", "convB.w", "convB.b"}
    assert tail_inits == {"fc.w", "fc.b"}
    head_path, tail_path = split.save(tmp_path)
    x = models.feeds(residual, n=1)[0]
    full = OrtPart(residual.SerializeToString()).run(x)["logits"]
    via_files = OrtPart(tail_path).run(OrtPart(head_path).run(x))["logits"]
    np.testing.assert_allclose(via_files, full, rtol=1e-5, atol=1e-6)


def test_verify_split_reports_a_mismatch(residual: onnx.ModelProto) -> None:
    split = split_model(residual, "block_relu")
    other = split_model(models.residual_model(seed=1), "block_relu")  # same graph, other weights
    bad = type(split)(split.head, other.tail, split.cut)
    result = verify_split(residual, bad, models.feeds(residual, n=2))
    assert not result.passed
    assert result.max_abs_diff > 1e-3


def test_torch_exported_resnet_blocks_are_cut_only_between_blocks(torch_residual: onnx.ModelProto) -> None:
    cuts = find_cut_candidates(torch_residual)
    ops = [c.op_type for c in cuts]
    # Inside a block the skip connection crosses, so only block outputs (Add/Relu) and the stem/pooling remain.
    graph_nodes = {n.output[0]: n for n in torch_residual.graph.node}
    block_inner = [n.output[0] for n in torch_residual.graph.node
                   if n.op_type == "Conv" and any(c.op_type == "Add" for c in torch_residual.graph.node
                                                  if n.output[0] in c.input)]
    assert block_inner, "the export should contain residual Adds fed by convolutions"
    assert not set(block_inner) & {c.tensor for c in cuts}
    assert ops.count("Add") == 2  # the output of each of the two residual blocks (before its ReLU)
    assert all(graph_nodes[c.tensor].op_type == c.op_type for c in cuts)
    samples = models.feeds(torch_residual, n=2, batch=2)
    for cut in cuts:
        result = verify_split(torch_residual, split_model(torch_residual, cut), samples)
        assert result.passed, result
        assert result.max_abs_diff <= 1e-4


def test_each_part_quantised_independently_stays_close(residual: onnx.ModelProto) -> None:
    split = split_model(residual, "block_relu")
    calibration = models.feeds(residual, n=16, seed=100)
    quantised = quantize_split(split, calibration)
    head_ops = {n.op_type for n in quantised.head.graph.node}
    tail_ops = {n.op_type for n in quantised.tail.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= head_ops
    assert {"QuantizeLinear", "DequantizeLinear"} <= tail_ops
    assert [o.name for o in quantised.head.graph.output] == ["block_relu"]
    assert [i.name for i in quantised.tail.graph.input] == ["block_relu"]
    props = {p.key: p.value for p in quantised.tail.metadata_props}
    assert props[META_CUT] == "block_relu"
    assert props["edgemodel.split.precision"] == "int8"
    result = verify_split(residual, quantised, models.feeds(residual, n=8, seed=7), rtol=0.0, atol=1.0)
    peak = result.outputs[0].max_abs_value
    assert result.max_abs_diff < 0.1 * peak, result  # INT8 both sides: within 10 % of the logits' range
    assert result.max_abs_diff > 0.0  # and really quantised
