"""Probe which execution providers really load, with a tiny model built without the onnx package.

The agent must not depend on ``onnx`` (an import-linter contract), so the probe model (one
``Add`` node, float32 ``[1]`` in and out) is encoded here as ONNX protobuf bytes by hand: a few
varint and length-delimited fields. A test checks it with ``onnx.checker``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edge_agent.providers import CPU, SessionLike

log = logging.getLogger(__name__)

_FLOAT = 1  # TensorProto.FLOAT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _value_info(name: str) -> bytes:
    dim = _bytes_field(1, _int_field(1, 1))  # TensorShapeProto.dim { dim_value: 1 }
    tensor_type = _int_field(1, _FLOAT) + _bytes_field(2, dim)
    return _bytes_field(1, name.encode()) + _bytes_field(2, _bytes_field(1, tensor_type))


def probe_model_bytes(opset: int = 13, ir_version: int = 7) -> bytes:
    """ONNX ModelProto bytes: y = x + x for float32 x of shape [1]."""
    node = _bytes_field(1, b"x") + _bytes_field(1, b"x") + _bytes_field(2, b"y") + _bytes_field(4, b"Add")
    graph = (
        _bytes_field(1, node)
        + _bytes_field(2, b"probe")
        + _bytes_field(11, _value_info("x"))
        + _bytes_field(12, _value_info("y"))
    )
    opset_id = _bytes_field(1, b"") + _int_field(2, opset)
    return (
        _int_field(1, ir_version)
        + _bytes_field(2, b"edgemodel-agent-probe")
        + _bytes_field(7, graph)
        + _bytes_field(8, opset_id)
    )


def working_providers(available: Sequence[str], factory: Callable[[bytes, list[str]], SessionLike]) -> list[str]:
    """The providers among ``available`` that create a session running on themselves."""
    model = probe_model_bytes()
    working: list[str] = []
    for provider in available:
        if provider == "AzureExecutionProvider":  # a remote-call provider, not a compute device
            continue
        providers = [provider] if provider == CPU else [provider, CPU]
        try:
            session = factory(model, providers)
        except Exception as exc:
            log.info("Provider %s does not load here: %s", provider, str(exc).splitlines()[0] if str(exc) else exc)
            continue
        if session.get_providers()[:1] == [provider]:
            working.append(provider)
        else:
            log.info("Provider %s is compiled in but does not load (session fell back to CPU)", provider)
    return working
