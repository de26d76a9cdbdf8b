"""A trainable, prunable PyTorch module from the loaded source.

TorchScript and TorchExport sources load as graphs whose convolutions, linear layers and batch
norms are functional aten calls on attributes; training works on them, but structured pruning
(torch-pruning) needs real ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` modules to find
channel dependencies. ``lift`` captures the model with ``torch.export`` (TorchScript through the
same TS->ExportedProgram converter the exporter uses) and turns those calls back into modules that
share the original weights; everything else stays a plain FX node.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

from edgemodel.convert.errors import ConversionError, Reason, first_line

log = logging.getLogger(__name__)

WEIGHTED = ("Conv1d", "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d")


def _attr(gm: Any, node: Any) -> Any:
    """The tensor a get_attr node reads, or None when ``node`` is something else."""
    if getattr(node, "op", None) != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _conv(gm: Any, node: Any) -> Any:
    from torch import nn

    args = list(node.args) + [None] * 7
    x, w, b = args[0], _attr(gm, args[1]), _attr(gm, args[2]) if args[2] is not None else None
    if node.target.__name__.startswith("convolution"):  # aten.convolution(x, w, b, stride, pad, dil, transposed, ...)
        if args[6]:
            return None
        stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
    else:
        stride, padding, dilation, groups = args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1
    if w is None or (args[2] is not None and b is None) or isinstance(padding, str) or w.dim() not in (3, 4):
        return None
    cls = nn.Conv2d if w.dim() == 4 else nn.Conv1d
    module = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                 dilation=dilation, groups=groups, bias=b is not None)
    module.weight = nn.Parameter(w.detach().clone())
    if b is not None:
        module.bias = nn.Parameter(b.detach().clone())
    return module, x


def _linear(gm: Any, node: Any) -> Any:
    from torch import nn

    x, w = node.args[0], _attr(gm, node.args[1])
    b = _attr(gm, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    if w is None or w.dim() != 2 or (len(node.args) > 2 and node.args[2] is not None and b is None):
        return None
    module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    module.weight = nn.Parameter(w.detach().clone())
    if b is not None:
        module.bias = nn.Parameter(b.detach().clone())
    return module, x


def _batch_norm(gm: Any, node: Any) -> Any:
    """aten.batch_norm / _native_batch_norm_legit_no_training (x, weight, bias, mean, var, ..., eps)."""
    import torch
    from torch import nn

    name = node.target.__name__
    x, w, b, mean, var = node.args[0], *(_attr(gm, a) if a is not None else None for a in node.args[1:5])
    eps = node.args[-1] if name.startswith("_native") else node.args[7]
    if mean is None or var is None or mean.dim() != 1:
        return None
    features = mean.shape[0]
    module = nn.BatchNorm2d(features, eps=float(eps), affine=w is not None)
    with torch.no_grad():
        if w is not None:
            module.weight.copy_(w)
            module.bias.copy_(b if b is not None else torch.zeros_like(w))
        assert module.running_mean is not None
        assert module.running_var is not None
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)
    return module, x


def _relu(gm: Any, node: Any) -> Any:
    """A ReLU module: quantizers (torchao's X86InductorQuantizer) find conv + ReLU patterns by their source module;
    a TorchScript source's bare aten.relu calls would leave every conv output unfused (unquantised after QAT)."""
    from torch import nn

    return nn.ReLU(), node.args[0]


def lift(model: Any, args: tuple[Any, ...], dynamic_shapes: Any = None, field: str = "spec.source.uri") -> Any:
    """``model`` (a TorchScript module or an ExportedProgram's module) as an ``fx.GraphModule`` with real layers.

    ``dynamic_shapes`` (as for ``torch.export.export``) keeps e.g. the batch dimension free, so the result
    trains on any batch size. The result computes the same outputs and owns copies of the weights.
    """
    import torch
    from torch import fx

    try:
        with warnings.catch_warnings():  # the TorchScript converter warns about every specialised branch
            warnings.simplefilter("ignore")
            if isinstance(model, torch.jit.ScriptModule):
                from edgemodel.convert.export import from_torchscript

                model = from_torchscript(model, args)
            program = torch.export.export(copy.deepcopy(model), args, dynamic_shapes=dynamic_shapes, strict=False)
            gm = program.module()
    except Exception as exc:
        raise ConversionError(Reason.INVALID_SPEC, f"{field}: the model cannot be captured for training "
                              f"({first_line(exc)}); make it torch.export-able or turn pruning, qat and "
                              "distillation off") from exc
    for node in list(gm.graph.nodes):  # shape guards of the capture: the lifted module is checked by its caller
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            gm.graph.erase_node(node)
    aten = torch.ops.aten
    lifters = {aten.conv2d.default: _conv, aten.conv1d.default: _conv, aten.convolution.default: _conv,
               aten.linear.default: _linear, aten.batch_norm.default: _batch_norm,
               aten._native_batch_norm_legit_no_training.default: _batch_norm, aten.relu.default: _relu}
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        fn = lifters.get(node.target) if node.op == "call_function" else None
        made = fn(gm, node) if fn else None
        if made is None:
            continue
        module, x = made
        name = f"{type(module).__name__.lower()}_{count}"
        count += 1
        gm.add_module(name, module)
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        if node.target is aten._native_batch_norm_legit_no_training.default:
            for user in list(node.users):  # getitem(bn, 0) -> the module's output
                if user.target.__name__ == "getitem" and user.args[1] == 0:
                    user.replace_all_uses_with(new)
                    graph.erase_node(user)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    lifted = fx.GraphModule(gm, graph)
    lifted.graph.lint()
    lifted.delete_all_unused_submodules()
    lifted.recompile()
    log.info("Captured the model for training: %d layers as modules", count)
    return lifted.eval()


def clone(module: Any) -> Any:
    """A deep copy of a lifted module (torch 2.13 warns about the pytree spec of captured graphs; harmless)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


def output_layers(gm: Any) -> list[Any]:
    """The weighted modules whose outputs reach the model's outputs without passing another one (kept whole)."""
    modules = dict(gm.named_modules())
    found: list[Any] = []
    seen: set[Any] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        for parent in node.all_input_nodes:
            if parent in seen:
                continue
            seen.add(parent)
            module = modules.get(str(parent.target)) if parent.op == "call_module" else None
            if module is not None and type(module).__name__ in ("Conv1d", "Conv2d", "Linear"):
                found.append(module)
            else:
                stack.append(parent)
    return found
