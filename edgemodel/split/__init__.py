"""Edge-cloud split inference: cut an ONNX model into a head (edge) and a tail (cloud).

Modules and who imports them (the package ``__init__`` imports nothing, so the agent can use the
light modules without pulling onnx):

- ``graph``    (onnx, onnxruntime; converter): candidate cut tensors, head/tail extraction, verification
- ``profile``  (onnx, onnxruntime; converter): per-cut head/tail latency and feature bytes
- ``planner``  (stdlib only; anyone): Neurosurgeon-style choice of the cut for a link
- ``codec``    (numpy, zstandard; agent): the wire format of features (FP32 / FP16 / INT8 + scale, zstd)
- ``runtime``  (onnxruntime, numpy; agent): a small ONNX Runtime wrapper used for heads, tails and full models
- ``remote``   (aiohttp, numpy, codec; agent): the HTTP(S)/mTLS client, the tail server and ``run_split``
- ``metrics``  (prometheus-client; agent): per-stage metrics of split requests
- ``shaping``  (stdlib asyncio): a TCP proxy that emulates a link's bandwidth and RTT (bench, tests)
"""
