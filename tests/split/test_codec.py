"""The feature wire format: round trips, error bounds, sizes (measured, with headers) and bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgemodel.split import codec
from edgemodel.split.codec import CodecError, Encoding, Precision, WireFormat


def relu_features(seed: int = 0, shape: tuple[int, ...] = (1, 64, 28, 28)) -> np.ndarray:
    """Post-ReLU-like features: about half exact zeros, the rest positive with a long tail."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape).astype(np.float32) * 1.7 - 0.1, 0.0)


def test_fp32_round_trip_is_exact_and_self_describing() -> None:
    x = relu_features()
    ids = np.array([[3, 1, 4]], np.int64)
    msg = codec.encode({"feat": x, "ids": ids})
    out = codec.decode(msg)
    assert list(out) == ["feat", "ids"]
    np.testing.assert_array_equal(out["feat"], x)
    assert out["feat"].dtype == np.float32
    np.testing.assert_array_equal(out["ids"], ids)
    assert out["ids"].dtype == np.int64
    headers = codec.inspect_message(msg)
    assert [(h.name, h.encoding, h.shape) for h in headers] == [
        ("feat", Encoding.RAW, (1, 64, 28, 28)), ("ids", Encoding.RAW, (1, 3))]
    assert msg[:4] == b"EMSF"


def test_fp16_error_is_within_half_precision() -> None:
    x = relu_features(1) * 10
    out = codec.decode(codec.encode({"f": x}, WireFormat(Precision.FP16)))["f"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=2.0 ** -11, atol=2.0 ** -24)


def test_int8_error_is_at_most_half_a_step_and_zeros_stay_exact() -> None:
    x = relu_features(2)
    msg = codec.encode({"f": x}, WireFormat(Precision.INT8))
    (header,) = codec.inspect_message(msg)
    assert header.encoding is Encoding.UINT8_AFFINE
    assert header.zero_point == 0  # ReLU features: the range starts at 0
    assert header.scale == pytest.approx(float(x.max()) / 255, rel=1e-6)
    out = codec.decode(msg)["f"]
    assert header.scale is not None
    assert np.max(np.abs(out - x)) <= header.scale / 2 * (1 + 1e-5)
    np.testing.assert_array_equal(out[x == 0], 0.0)


def test_int8_handles_signed_constant_and_empty_tensors() -> None:
    signed = np.linspace(-3.0, 1.0, 101, dtype=np.float32)
    out = codec.decode(codec.encode({"s": signed}, WireFormat(Precision.INT8)))["s"]
    (header,) = codec.inspect_message(codec.encode({"s": signed}, WireFormat(Precision.INT8)))
    assert header.zero_point is not None
    assert 0 < header.zero_point < 255
    assert np.max(np.abs(out - signed)) <= header.scale / 2 * (1 + 1e-5)  # type: ignore[operator]
    for x in (np.zeros((2, 3), np.float32), np.full((4,), 2.5, np.float32), np.zeros((0, 5), np.float32)):
        back = codec.decode(codec.encode({"x": x}, WireFormat(Precision.INT8)))["x"]
        assert back.shape == x.shape
        np.testing.assert_allclose(back, x, atol=2.5 / 255)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=4, max_side=9),
                  elements=st.floats(-1e4, 1e4, allow_nan=False, width=32)))
def test_int8_bound_holds_for_any_finite_tensor(x: np.ndarray) -> None:
    msg = codec.encode({"x": x}, WireFormat(Precision.INT8, zstd=True))
    (header,) = codec.inspect_message(msg)
    out = codec.decode(msg)["x"]
    assert out.shape == x.shape
    if x.size:
        assert header.scale is not None
        assert np.max(np.abs(out.astype(np.float64) - x)) <= header.scale / 2 + header.scale * 1e-3 + 1e-6


def test_sizes_are_exactly_payload_plus_documented_overhead() -> None:
    x = relu_features(3)  # 50,176 elements
    n = x.size
    overhead = codec.message_overhead({"feat": 4})
    sizes = {str(f): len(codec.encode({"feat": x}, f)) for f in map(WireFormat.parse, ("fp32", "fp16", "int8"))}
    assert sizes["fp32"] == 4 * n + overhead
    assert sizes["fp16"] == 2 * n + overhead
    assert sizes["int8"] == n + codec.message_overhead({"feat": 4}, Precision.INT8)
    # Without zstd INT8 is 4x smaller than FP32 minus the header: just under 4x, honestly.
    assert 3.99 < sizes["fp32"] / sizes["int8"] < 4.0


def test_zstd_makes_int8_relu_features_more_than_4x_smaller() -> None:
    x = relu_features(4)
    fp32 = len(codec.encode({"feat": x}))
    int8_zstd = len(codec.encode({"feat": x}, WireFormat.parse("int8+zstd")))
    fp32_zstd = len(codec.encode({"feat": x}, WireFormat.parse("fp32+zstd")))
    assert fp32 / int8_zstd >= 4.0
    assert fp32_zstd < fp32  # the zeros compress in FP32 too
    np.testing.assert_array_equal(codec.decode(codec.encode({"feat": x}, WireFormat.parse("fp32+zstd")))["feat"], x)


def test_wire_format_parsing() -> None:
    assert WireFormat.parse("INT8+zstd") == WireFormat(Precision.INT8, zstd=True)
    assert str(WireFormat.parse("fp16")) == "fp16"
    for bad in ("int4", "fp32+gzip", ""):
        with pytest.raises(CodecError, match="is not one of fp32, fp16, int8"):
            WireFormat.parse(bad)


def test_values_that_cannot_travel_as_requested_are_refused() -> None:
    with pytest.raises(CodecError, match="NaN or infinity"):
        codec.encode({"f": np.array([1.0, np.nan], np.float32)}, WireFormat(Precision.INT8))
    with pytest.raises(CodecError, match="exceeds the FP16 range"):
        codec.encode({"f": np.array([1e6], np.float32)}, WireFormat(Precision.FP16))
    with pytest.raises(CodecError, match="nothing to encode"):
        codec.encode({})
    with pytest.raises(CodecError, match="dtype complex64"):
        codec.encode({"c": np.zeros(2, np.complex64)})


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda m: b"NOPE" + m[4:], "not a feature message"),
    (lambda m: m[:4] + bytes([9]) + m[5:], "version 9 is not supported"),
    (lambda m: m[:5] + bytes([0x80]) + m[6:], "unknown flags"),
    (lambda m: m[:-1], "truncated feature message"),
    (lambda m: m + b"\x00", "trailing bytes"),
    (lambda m: m[:3], "shorter than its 8-byte header"),
    (lambda m: m[:6] + struct.pack("<H", 2) + m[8:], "truncated feature message"),
])
def test_malformed_messages_fail_with_a_clear_error(mutate: object, message: str) -> None:
    msg = codec.encode({"f": np.arange(6, dtype=np.float32).reshape(2, 3)})
    with pytest.raises(CodecError, match=message):
        codec.decode(mutate(msg))  # type: ignore[operator]


def test_payload_length_must_match_the_shape() -> None:
    msg = bytearray(codec.encode({"f": np.zeros((2, 3), np.float32)}))
    # dims start after header(8) + name_len(2) + name(1) + enc/dtype/ndim(3)
    struct.pack_into("<I", msg, 14, 3)
    with pytest.raises(CodecError, match="do not match shape"):
        codec.decode(bytes(msg))


def test_decoded_size_is_bounded() -> None:
    big = codec.encode({"z": np.zeros((1024, 1024), np.float32)}, WireFormat.parse("fp32+zstd"))
    assert len(big) < 10_000  # a zstd "bomb": tiny on the wire, 4 MiB decoded
    with pytest.raises(CodecError, match="does not decompress within 1000000 bytes"):
        codec.decode(big, max_decoded_bytes=1_000_000)
    raw = codec.encode({"z": np.zeros((1024, 1024), np.float32)})
    with pytest.raises(CodecError, match="would exceed 1000000 bytes"):
        codec.decode(raw, max_decoded_bytes=1_000_000)


def test_corrupt_zstd_body_is_reported() -> None:
    msg = codec.encode({"f": np.ones(64, np.float32)}, WireFormat.parse("fp32+zstd"))
    with pytest.raises(CodecError, match="zstd body is corrupt"):
        codec.decode(msg[:8] + b"\x00" * (len(msg) - 8))
