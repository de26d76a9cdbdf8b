"""Compression with training, piece by piece on a tiny CNN: capture, structured pruning, QAT export, distillation."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgemodel.api import SourceFormat, TensorSpec  # noqa: E402
from edgemodel.convert.errors import ConversionError  # noqa: E402
from edgemodel.convert.export import _dynamic_shapes, export, export_module  # noqa: E402
from edgemodel.convert.runners import ort_session  # noqa: E402
from edgemodel.convert.source import LoadedSource  # noqa: E402
from edgemodel.convert.training import distill, qat  # noqa: E402
from edgemodel.convert.training.lift import clone, lift, output_layers  # noqa: E402
from edgemodel.convert.training.loop import TrainSet, cross_entropy, fit, predict  # noqa: E402
from edgemodel.convert.training.prune import count, prune_channels, width_student  # noqa: E402
from edgemodel_dev.examples_models import digits_cnn  # noqa: E402

INPUTS = [TensorSpec(name="input", shape=[-1, 1, 8, 8])]
DYNAMIC = _dynamic_shapes(INPUTS)


@pytest.fixture(scope="module")
def tiny() -> Any:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                *list(digits_cnn(width=8).children())[2:]).eval()
    with torch.no_grad():  # batch norm with real statistics
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def captured(tiny: Any) -> Any:
    """The tiny CNN lifted once (from its torch.export form, the quicker capture); tests take deep copies."""
    return lift(torch.export.export(tiny, (_x(),)).module(), (_x(),), DYNAMIC)


def _x(n: int = 4, seed: int = 0) -> Any:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32))


@pytest.mark.parametrize("form", ["TorchScript", "TorchExport"])
def test_lift_gives_real_layers_with_the_same_outputs_at_any_batch(tiny: Any, form: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = torch.jit.script(tiny) if form == "TorchScript" else torch.export.export(tiny, (_x(),)).module()
        lifted = lift(source, (_x(),), DYNAMIC)
    kinds = sorted(type(m).__name__ for m in lifted.children())
    assert kinds == ["BatchNorm2d", "Conv2d", "Conv2d", "Conv2d", "Linear", "ReLU", "ReLU", "ReLU"]
    x = _x(7, seed=1)  # another batch size than the capture's
    assert torch.allclose(predict(lifted, [x]), predict(tiny, [x]), atol=1e-5)
    assert [type(m).__name__ for m in output_layers(lifted)] == ["Linear"]


def test_structured_pruning_removes_channels_and_onnx_runtime_runs_fewer_macs(captured: Any, tmp_path: Path) -> None:
    lifted = clone(captured)
    convs_before = [m.out_channels for m in lifted.modules() if isinstance(m, torch.nn.Conv2d)]
    pruned = prune_channels(lifted, (_x(2),), target_speedup=2.0, seed=0)
    convs_after = [m.out_channels for m in pruned.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(a < b for a, b in zip(convs_after, convs_before, strict=True)), (convs_before, convs_after)
    assert pruned.macs_before / pruned.macs_after >= 2.0
    assert count(pruned.model, (_x(1),))[0] == pytest.approx(pruned.macs_after, rel=1e-3)  # per sample
    linear = next(m for m in pruned.model.modules() if isinstance(m, torch.nn.Linear))
    assert linear.out_features == 10, "output layers keep their width"
    path = export_module(pruned.model.eval(), INPUTS, {"input": _x(2).numpy()}, tmp_path / "pruned.onnx", None,
                         ["logits"])
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    conv_out = [weights[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]
    assert conv_out == convs_after, "the ONNX graph has the pruned channel counts"
    out = ort_session(path, "all", 1).run(None, {"input": _x(5).numpy()})[0]
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out, predict(pruned.model, [_x(5)]).numpy(), atol=1e-4)


def test_width_student_scales_every_hidden_layer_and_is_freshly_initialised(captured: Any) -> None:
    teacher = captured
    student = width_student(teacher, (_x(2),), 0.5, seed=0)
    widths = [(m.out_channels, s.out_channels) for m, s in zip(
        [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)],
        [m for m in student.model.modules() if isinstance(m, torch.nn.Conv2d)], strict=True)]
    assert all(s == t // 2 for t, s in widths), widths
    assert 3.0 <= student.macs_before / student.macs_after <= 4.5  # about 1/w^2 (the first conv has 1 input)
    assert not torch.allclose(predict(student.model, [_x()]), predict(teacher, [_x()]))


def test_qat_exports_qdq_u8s8_per_channel_that_onnx_runtime_runs(captured: Any, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    lifted = captured
    x, y = _x(64, seed=2), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    prepared = qat.prepare(lifted, (_x(2),), DYNAMIC)
    fitted = fit(prepared, TrainSet([x], y, []), cross_entropy, 1, 1e-4, 32, 0, time.monotonic() + 60, "qat",
                 train_mode=qat.train_mode)
    assert fitted.epochs == 1
    converted = qat.convert(prepared)
    path = export_module(converted, INPUTS, {"input": _x(2).numpy()}, tmp_path / "qat.onnx", None, ["logits"])
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops
    assert "DequantizeLinear" in ops
    init = {i.name: i for i in model.graph.initializer}
    conv_weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
                      and init[n.input[0]].data_type == TensorProto.INT8 and len(init[n.input[0]].dims) == 4]
    assert conv_weight_dq, "convolution weights are stored as int8"
    assert all(list(init[n.input[1]].dims) == [init[n.input[0]].dims[0]] for n in conv_weight_dq), "per-channel scales"
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = [init[n.input[2]] for n in activation_q if len(n.input) > 2 and n.input[2] in init]
    assert zero_points
    assert all(z.data_type == TensorProto.UINT8 for z in zero_points), "U8 activations"
    out = ort_session(path, "all", 1).run(None, {"input": x.numpy()})[0]
    reference = predict(lifted, [x]).numpy()
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_distillation_loss_is_on_soft_targets() -> None:
    teacher = torch.tensor([[4.0, 1.0, -2.0], [0.0, 3.0, 0.5]])
    labels = torch.tensor([2, 0])  # deliberately unlike the teacher's top-1
    soft_only = distill.kd_loss(temperature=4.0, alpha=1.0)
    assert float(soft_only(teacher.clone(), [teacher], labels)) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros_like(teacher)
    assert float(soft_only(student, [teacher], labels)) == pytest.approx(float(soft_only(student, [teacher], None)))
    t = 4.0
    kl = torch.nn.functional.kl_div(torch.log_softmax(student / t, 1), torch.softmax(teacher / t, 1),
                                    reduction="batchmean")
    assert float(soft_only(student, [teacher], labels)) == pytest.approx(float(kl) * t * t, rel=1e-5)
    mixed = distill.kd_loss(temperature=4.0, alpha=0.5)
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert float(mixed(student, [teacher], labels)) == pytest.approx(0.5 * float(kl) * t * t + 0.5 * float(ce), rel=1e-5)


def test_student_with_other_outputs_is_refused_naming_the_field() -> None:
    with pytest.raises(ConversionError) as err:
        distill.check_student(torch.zeros(2, 5), torch.zeros(2, 10), "spec.optimization.distillation.student")
    assert err.value.reason.value == "StudentMismatch"
    assert err.value.exit_code == 2
    assert str(err.value).startswith("spec.optimization.distillation.student: the student outputs [2, 5]")


def test_training_stops_at_the_time_bound(captured: Any) -> None:
    lifted = clone(captured)
    x, y = _x(32), torch.zeros(32, dtype=torch.long)
    fitted = fit(lifted, TrainSet([x], y, []), cross_entropy, 50, 1e-3, 16, 0, time.monotonic() - 1, "bounded")
    assert fitted.epochs == 1
    assert fitted.stopped_by_time
    assert "stopped at the time bound after 1 of 50" in fitted.describe()


def test_training_is_seeded(captured: Any) -> None:
    runs = []
    for _ in range(2):
        lifted = clone(captured)
        x, y = _x(32), torch.arange(32) % 10
        fit(lifted, TrainSet([x], y, []), cross_entropy, 2, 1e-2, 8, 7, time.monotonic() + 60, "seeded")
        runs.append(predict(lifted.eval(), [x]))
    assert torch.equal(runs[0], runs[1])


def test_pruned_widths_stay_multiples_of_the_ort_channel_block() -> None:
    from torch import nn

    from edgemodel.convert.training.prune import alignment

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                         nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    model = lift(torch.export.export(wide, (_x(),)).module(), (_x(),), DYNAMIC)
    assert alignment(model) == 16
    pruned = prune_channels(model, (_x(),), 2.5, seed=0)
    widths = [m.out_channels for m in pruned.model.modules() if isinstance(m, nn.Conv2d)]
    assert pruned.alignment == 16
    assert all(w % 16 == 0 and w >= 16 for w in widths), widths
    assert widths != [32, 64]
    assert pruned.macs_before / pruned.macs_after >= 2.5
    # a model whose widths share no block (e.g. 12 channels) is pruned freely
    odd = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(12, 10)).eval()
    assert alignment(lift(torch.export.export(odd, (_x(),)).module(), (_x(),), DYNAMIC)) is None


def test_qat_folds_batch_norms_first_so_convert_skips_torchaos_refold(captured: Any) -> None:
    """A batch norm left in makes convert_pt2e re-export ~100 pattern graphs (minutes under load); none is left."""
    folded = qat.fold_batch_norms(captured)
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m for m in captured.modules() if isinstance(m, torch.nn.BatchNorm2d)], "the original is untouched"
    x = _x(6, seed=3)
    assert torch.allclose(predict(folded, [x]), predict(captured, [x]), atol=1e-5)
    prepared = qat.prepare(captured, (_x(2),), DYNAMIC)
    targets = {str(n.target) for n in prepared.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "batch_norm" in t], targets


def test_mixup_mixes_inputs_and_labels_and_the_teacher_labels_the_mixture() -> None:
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    x = _x(8, seed=4)
    y = torch.arange(8) % 3
    generator = torch.Generator().manual_seed(0)
    (mixed,), (soft,), labels = distill.mixup(teacher)([x], [torch.zeros(8, 3)], y, generator)
    assert isinstance(labels, distill.MixedLabels)
    w = labels.lam.view(-1, 1, 1, 1)
    assert torch.all((labels.lam >= 0) & (labels.lam <= 1))
    # each mixed sample is lam * itself + (1 - lam) * some sample of the batch
    partner = (mixed - w * x) / (1 - w).clamp_min(1e-6)
    assert all(any(torch.allclose(partner[i], x[j], atol=1e-3) for j in range(8)) for i in range(8) if w[i] < 0.99)
    assert not torch.allclose(mixed, x)
    assert torch.allclose(soft, teacher(mixed).detach()), "soft targets are the teacher's outputs on the mixture"
    assert torch.equal(labels.first, y)
    assert torch.equal(labels.dominant(), torch.where(labels.lam >= 0.5, y, labels.second))
    again = distill.mixup(teacher)([x], [torch.zeros(8, 3)], y, torch.Generator().manual_seed(0))
    assert torch.equal(again[0][0], mixed), "seeded: the same generator gives the same mixture"
    assert distill.mixable([x])
    assert not distill.mixable([torch.zeros(2, 3, dtype=torch.int64)])


def test_distillation_loss_weighs_mixed_labels_by_their_share() -> None:
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = distill.MixedLabels(torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([0.75, 0.5]))
    loss = distill.kd_loss(temperature=2.0, alpha=0.0)(out, [out.clone()], labels)
    ce = torch.nn.functional.cross_entropy
    expected = (0.75 * ce(out[:1], labels.first[:1]) + 0.25 * ce(out[:1], labels.second[:1])
                + 0.5 * ce(out[1:], labels.first[1:]) + 0.5 * ce(out[1:], labels.second[1:])) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_unlabelled_samples_learn_soft_targets_only() -> None:
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, -1, 2])  # the middle sample has no label
    hard_only = distill.kd_loss(temperature=2.0, alpha=0.0)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out[:1], labels[:1]) + ce(out[2:], labels[2:])) / 2
    assert float(hard_only(out, [teacher], labels)) == pytest.approx(float(expected), rel=1e-5)
    none_labelled = torch.tensor([-1, -1, -1])
    assert float(hard_only(out, [teacher], none_labelled)) == pytest.approx(0.0, abs=1e-6)
    soft_only = distill.kd_loss(temperature=2.0, alpha=1.0)
    both = distill.kd_loss(temperature=2.0, alpha=0.5)
    assert float(both(out, [teacher], labels)) == pytest.approx(
        0.5 * float(soft_only(out, [teacher], labels)) + 0.5 * float(expected), rel=1e-5)


def test_fit_reports_accuracy_over_labelled_samples_and_fine_tuning_skips_unlabelled(tiny: Any) -> None:
    from edgemodel.convert.training import _labelled

    x = _x(6, seed=5)
    labels = torch.tensor([1, -1, 2, -1, 0, 3])
    kept = _labelled([x], labels)
    assert torch.equal(kept.labels, torch.tensor([1, 2, 0, 3]))
    assert torch.equal(kept.inputs[0], x[[0, 2, 4, 5]])
    soft = predict(tiny, [x])
    fitted = fit(clone(tiny), TrainSet([x], labels, [soft]), distill.kd_loss(4.0, 0.7), 2, 1e-3, 4, 0,
                 time.monotonic() + 60, "student")
    assert fitted.epochs == 2
    assert np.isfinite(fitted.loss)


def test_qat_of_a_torchscript_source_quantises_every_convolution_in_onnx_runtime(tiny: Any, tmp_path: Path) -> None:
    """ReLUs are lifted to modules, so the quantizer sees conv + ReLU (+ folded batch norm) and quantises each
    output: ONNX Runtime then runs every convolution as QLinearConv (an unquantised one ran 2.7x slower)."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lifted = lift(torch.jit.script(tiny), (_x(),), DYNAMIC)
    prepared = qat.prepare(lifted, (_x(2),), DYNAMIC)
    converted = qat.convert(prepared)
    path = export_module(converted, INPUTS, {"input": _x(2).numpy()}, tmp_path / "qat.onnx", None, ["logits"])
    optimised = tmp_path / "qat-opt.onnx"
    ort_session(path, "all", 1, optimized_path=optimised)
    ops = [n.op_type for n in onnx.load(str(optimised)).graph.node]
    assert ops.count("QLinearConv") == 3, ops
    assert "FusedConv" not in ops
    assert "Conv" not in ops


def _depthwise_separable_upsampling(width: int = 8) -> Any:
    """MobileNetV1-style on the 8x8 image upsampled 4x (nn.Upsample): depthwise + pointwise, batch norm, ReLU."""
    from torch import nn

    def sep(cin: int, cout: int, stride: int) -> list[Any]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    torch.manual_seed(0)
    return nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), *sep(width, 2 * width, 2),
                         *sep(2 * width, 2 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, 10)).eval()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_a_torchscript_source_with_upsampling_exports_to_onnx_that_runs_like_the_model(mode: str, tmp_path: Path) -> None:
    """TorchScript's converter writes an absent upsampling scale as -1; exported as is, the Resize failed onnx.checker
    ("Inferred shape and existing shape differ ... (-8) vs (32)") and ONNX Runtime ("Scale value should be greater than 0")."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(1, 4, 3), nn.ReLU(),
                          nn.Upsample(size=(20, 20), mode=mode), nn.Conv2d(4, 2, 3)).eval()
    source = LoadedSource(SourceFormat.TORCHSCRIPT, tmp_path / "m.pt", torch_model=torch.jit.script(model))
    info = export(source, INPUTS, {"input": _x(2).numpy()}, tmp_path / "m.onnx", None)
    assert info.exporter.startswith("torch.onnx dynamo (via TorchScript to ExportedProgram)"), info.exporter
    x = _x(3, seed=1)
    got = ort_session(info.path, "all", 1).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_qat_of_a_depthwise_separable_torchscript_source_with_upsampling_quantises_every_convolution(
        tmp_path: Path) -> None:
    """Depthwise and pointwise convolutions (batch norms folded) all run as QLinearConv after QAT, with the model's
    nn.Upsample (from TorchScript) exported as a valid Resize."""
    import onnx

    model = _depthwise_separable_upsampling()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lifted = lift(torch.jit.script(model), (_x(),), DYNAMIC)
    converted = qat.convert(qat.prepare(lifted, (_x(2),), DYNAMIC))
    path = export_module(converted, INPUTS, {"input": _x(2).numpy()}, tmp_path / "qat.onnx", None, ["logits"])
    optimised = tmp_path / "qat-opt.onnx"
    session = ort_session(path, "all", 1, optimized_path=optimised)
    ops = [n.op_type for n in onnx.load(str(optimised)).graph.node]
    assert ops.count("QLinearConv") == 5, ops
    assert "Conv" not in ops, ops
    assert "FusedConv" not in ops, ops
    x = _x(3, seed=2)
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, converted(x).detach().numpy(), atol=0.05 * float(np.abs(got).max()) + 1e-3)
