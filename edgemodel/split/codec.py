"""Wire format of split-inference features: FP32, FP16 or INT8 with scale, optionally zstd.

Imported by the edge agent: numpy (and ``zstandard`` from the ``agent`` extra) only.

A message is self-describing, little-endian::

    header  "EMSF" | version u8 (=1) | flags u8 (bit 0: body is zstd-compressed) | count u16
    body    count x tensor (the whole body is one zstd frame when flag bit 0 is set)
    tensor  name_len u16 | name utf-8 | encoding u8 | dtype u8 | ndim u8 | dims u32 x ndim
            | [scale f32 | zero_point u8]  (INT8 only) | nbytes u64 | data

Encodings: ``0`` raw (data in ``dtype``), ``1`` float16 (decoded to ``dtype``), ``2`` affine
uint8 ``x ~= scale * (q - zero_point)`` (decoded to ``dtype``). The precision applies to
floating tensors only; integer and boolean tensors always travel raw. INT8 is per tensor and
per message: the range is taken from the tensor itself (it always contains 0, so ReLU zeros stay
exact), so no calibration is needed and nothing is clipped; the error of every element is at
most ``scale / 2``. The fixed overhead is 8 bytes per message plus ``16 + len(name) + 4 * ndim``
bytes per tensor (+5 for INT8), which is why INT8 without zstd is slightly *less* than 4x
smaller than FP32.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import numpy as np

MAGIC = b"EMSF"
VERSION = 1
FLAG_ZSTD = 0x01
MEDIA_TYPE = "application/x-edgemodel-features"
DEFAULT_MAX_DECODED_BYTES = 512 * 1024 * 1024
FP16_MAX = float(np.finfo(np.float16).max)

_HEADER = struct.Struct("<4sBBH")
_U16 = struct.Struct("<H")
_TENSOR_HEAD = struct.Struct("<BBB")
_INT8_PARAMS = struct.Struct("<fB")
_U64 = struct.Struct("<Q")


class CodecError(ValueError):
    """A message cannot be encoded or decoded; the text says what is wrong and what to do."""


class Precision(StrEnum):
    """How floating features travel: exact FP32, half precision, or 8-bit affine with a scale."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Encoding(IntEnum):
    RAW = 0
    FP16 = 1
    UINT8_AFFINE = 2


_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"),
    4: np.dtype("i1"), 5: np.dtype("u1"), 6: np.dtype("<i2"), 7: np.dtype("<i4"), 8: np.dtype("<i8"),
    9: np.dtype("?"), 10: np.dtype("<u2"), 11: np.dtype("<u4"), 12: np.dtype("<u8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class WireFormat:
    """Precision of floating features plus optional zstd compression of the whole message."""

    precision: Precision = Precision.FP32
    zstd: bool = False
    zstd_level: int = 3

    @classmethod
    def parse(cls, text: str) -> WireFormat:
        """``fp32``, ``fp16``, ``int8``, optionally with ``+zstd`` (e.g. ``int8+zstd``)."""
        base, _, extra = text.strip().lower().partition("+")
        if base not in {p.value for p in Precision} or extra not in {"", "zstd"}:
            raise CodecError(f"wire format {text!r} is not one of fp32, fp16, int8 (optionally +zstd, e.g. int8+zstd)")
        return cls(Precision(base), zstd=extra == "zstd")

    def __str__(self) -> str:
        return f"{self.precision.value}{'+zstd' if self.zstd else ''}"


@dataclass(frozen=True)
class TensorHeader:
    """What a message says about one tensor (see :func:`inspect_message`)."""

    name: str
    encoding: Encoding
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    payload_bytes: int
    scale: float | None = None
    zero_point: int | None = None


def quantize_uint8(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Affine uint8 quantisation of a finite float array over ``[min(x, 0), max(x, 0)]``.

    Returns ``(q, scale, zero_point)`` with ``x ~= scale * (q - zero_point)`` and an error of at
    most ``scale / 2`` per element.
    """
    if x.size == 0:
        return np.zeros(x.shape, np.uint8), 1.0, 0
    if not np.isfinite(x).all():
        raise CodecError("features contain NaN or infinity; INT8 needs finite values (use fp32 to transfer them)")
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    if hi == lo:
        return np.zeros(x.shape, np.uint8), 1.0, 0
    scale = max(float(np.float32((hi - lo) / 255.0)), float(np.finfo(np.float32).tiny))  # subnormal ranges
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def dequantize_uint8(q: np.ndarray, scale: float, zero_point: int, dtype: np.dtype[Any] | None = None) -> np.ndarray:
    """Inverse of :func:`quantize_uint8`."""
    out = (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return out if dtype is None or dtype == np.float32 else out.astype(dtype)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - zstandard is in the agent extra
        raise CodecError("zstd needs the 'zstandard' package: pip install 'edgemodel[agent]'") from exc
    return zstandard


def _encode_tensor(name: str, array: np.ndarray, precision: Precision) -> list[bytes]:
    arr = np.asarray(array)
    name_bytes = name.encode("utf-8")
    if not name_bytes or len(name_bytes) > 0xFFFF:
        raise CodecError(f"tensor name {name!r} must be 1..65535 bytes of UTF-8")
    if arr.ndim > 255 or any(d > 0xFFFFFFFF for d in arr.shape):
        raise CodecError(f"tensor {name!r} has shape {arr.shape}; at most 255 dimensions of < 2**32 are supported")
    floating = np.issubdtype(arr.dtype, np.floating)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if floating and precision is Precision.FP32 and dtype != np.float16:
        dtype = np.dtype("<f4")
    if dtype not in _CODES:
        raise CodecError(f"tensor {name!r} has dtype {arr.dtype}, which the feature codec does not carry")
    params = b""
    if floating and precision is Precision.FP16:
        encoding = Encoding.FP16
        finite = arr[np.isfinite(arr)]
        if finite.size and float(np.max(np.abs(finite))) > FP16_MAX:
            raise CodecError(f"tensor {name!r} exceeds the FP16 range (|x| > {FP16_MAX:g}); use fp32 or int8")
        data = arr.astype("<f2")
    elif floating and precision is Precision.INT8:
        encoding = Encoding.UINT8_AFFINE
        data, scale, zero_point = quantize_uint8(arr)
        params = _INT8_PARAMS.pack(scale, zero_point)
    else:
        encoding = Encoding.RAW
        data = arr.astype(dtype, copy=False)
    payload = np.ascontiguousarray(data).tobytes()
    head = (
        _U16.pack(len(name_bytes)) + name_bytes + _TENSOR_HEAD.pack(encoding, _CODES[dtype], arr.ndim)
        + struct.pack(f"<{arr.ndim}I", *arr.shape) + params + _U64.pack(len(payload))
    )
    return [head, payload]


def encode(tensors: Mapping[str, np.ndarray], fmt: WireFormat | None = None) -> bytes:
    """Encode named tensors into one message (see the module docstring for the layout)."""
    fmt = fmt or WireFormat()
    if not tensors:
        raise CodecError("nothing to encode: pass at least one named tensor")
    if len(tensors) > 0xFFFF:
        raise CodecError(f"{len(tensors)} tensors in one message; at most 65535 are supported")
    parts: list[bytes] = []
    for name, array in tensors.items():
        parts.extend(_encode_tensor(name, array, fmt.precision))
    body = b"".join(parts)
    flags = 0
    if fmt.zstd:
        body = _zstd().ZstdCompressor(level=fmt.zstd_level, write_content_size=True).compress(body)
        flags |= FLAG_ZSTD
    return _HEADER.pack(MAGIC, VERSION, flags, len(tensors)) + body


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError(f"truncated feature message: {what} needs {n} bytes at offset {self.pos}, "
                             f"only {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size, what))


def _body(data: bytes | bytearray | memoryview, max_decoded_bytes: int) -> tuple[int, memoryview]:
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise CodecError(f"feature message of {len(view)} bytes is shorter than its {_HEADER.size}-byte header")
    magic, version, flags, count = _HEADER.unpack(view[:_HEADER.size])
    if magic != MAGIC:
        raise CodecError(f"not a feature message (magic {bytes(magic)!r}, expected {MAGIC!r}); "
                         f"send bodies encoded with edgemodel.split.codec.encode")
    if version != VERSION:
        raise CodecError(f"feature message version {version} is not supported (this side speaks {VERSION}); "
                         f"upgrade the older side")
    if flags & ~FLAG_ZSTD:
        raise CodecError(f"feature message has unknown flags 0x{flags:02x}")
    body = view[_HEADER.size:]
    if flags & FLAG_ZSTD:
        body = memoryview(_decompress(bytes(body), max_decoded_bytes))
    return count, body


def _decompress(body: bytes, limit: int) -> bytes:
    """Decompress a zstd body, never producing (or allocating for) more than ``limit`` bytes."""
    zstandard = _zstd()
    chunks: list[bytes] = []
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while chunk := reader.read(min(1 << 20, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise CodecError(f"zstd body does not decompress within {limit} bytes; raise max_decoded_bytes "
                                     f"if this is expected")
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd body is corrupt: {exc}") from exc
    return b"".join(chunks)


def _headers(reader: _Reader, count: int, max_decoded_bytes: int) -> list[tuple[TensorHeader, memoryview]]:
    out: list[tuple[TensorHeader, memoryview]] = []
    total = 0
    for index in range(count):
        (name_len,) = reader.unpack(_U16, f"tensor {index} name length")
        try:
            name = bytes(reader.take(name_len, f"tensor {index} name")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"tensor {index} name is not UTF-8") from exc
        encoding_code, dtype_code, ndim = reader.unpack(_TENSOR_HEAD, f"tensor {name!r} header")
        try:
            encoding = Encoding(encoding_code)
        except ValueError as exc:
            raise CodecError(f"tensor {name!r} has unknown encoding {encoding_code}") from exc
        if dtype_code not in _DTYPES:
            raise CodecError(f"tensor {name!r} has unknown dtype code {dtype_code}")
        dtype = _DTYPES[dtype_code]
        shape = tuple(int(d) for d in reader.unpack(struct.Struct(f"<{ndim}I"), f"tensor {name!r} dims"))
        scale: float | None = None
        zero_point: int | None = None
        if encoding is Encoding.UINT8_AFFINE:
            scale, zero_point = reader.unpack(_INT8_PARAMS, f"tensor {name!r} scale")
            if not (np.isfinite(scale) and scale > 0):
                raise CodecError(f"tensor {name!r} has an invalid INT8 scale {scale}")
        if encoding is not Encoding.RAW and dtype.kind != "f":
            raise CodecError(f"tensor {name!r}: encoding {encoding.name} is only valid for floating dtypes, not {dtype}")
        (nbytes,) = reader.unpack(_U64, f"tensor {name!r} length")
        wire_itemsize = {Encoding.RAW: dtype.itemsize, Encoding.FP16: 2, Encoding.UINT8_AFFINE: 1}[encoding]
        elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if nbytes != elements * wire_itemsize:
            raise CodecError(f"tensor {name!r}: {nbytes} payload bytes do not match shape {shape} "
                             f"({elements} x {wire_itemsize} bytes)")
        total += elements * dtype.itemsize
        if total > max_decoded_bytes:
            raise CodecError(f"decoded features would exceed {max_decoded_bytes} bytes; raise max_decoded_bytes "
                             f"if this is expected")
        payload = reader.take(nbytes, f"tensor {name!r} data")
        out.append((TensorHeader(name, encoding, dtype, shape, nbytes, scale, zero_point), payload))
    if reader.pos != len(reader.data):
        raise CodecError(f"feature message has {len(reader.data) - reader.pos} trailing bytes after {count} tensors")
    return out


def inspect_message(data: bytes | bytearray | memoryview,
                    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> list[TensorHeader]:
    """Headers of every tensor in a message, without decoding the data."""
    count, body = _body(data, max_decoded_bytes)
    return [header for header, _ in _headers(_Reader(body), count, max_decoded_bytes)]


def decode(data: bytes | bytearray | memoryview,
           max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> dict[str, np.ndarray]:
    """Decode a message into named arrays (FP16 and INT8 tensors come back in their original dtype)."""
    count, body = _body(data, max_decoded_bytes)
    out: dict[str, np.ndarray] = {}
    for header, payload in _headers(_Reader(body), count, max_decoded_bytes):
        if header.name in out:
            raise CodecError(f"tensor {header.name!r} appears twice in one feature message")
        if header.encoding is Encoding.RAW:
            array = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
        elif header.encoding is Encoding.FP16:
            array = np.frombuffer(payload, dtype="<f2").reshape(header.shape).astype(header.dtype)
        else:
            assert header.scale is not None
            assert header.zero_point is not None
            q = np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
            array = dequantize_uint8(q, header.scale, header.zero_point, header.dtype)
        out[header.name] = array
    return out


def message_overhead(names_and_ndims: Mapping[str, int], precision: Precision = Precision.FP32) -> int:
    """Bytes of framing (everything but the tensor data) of an uncompressed message."""
    per_tensor = sum(_U16.size + len(n.encode()) + _TENSOR_HEAD.size + 4 * nd + _U64.size
                     for n, nd in names_and_ndims.items())
    extra = _INT8_PARAMS.size * len(names_and_ndims) if precision is Precision.INT8 else 0
    return _HEADER.size + per_tensor + extra
