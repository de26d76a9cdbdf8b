"""The gRPC servicer's own CPU work per digits request, in a tight loop (no grpc.aio, no network).

Times ``InferenceServicer.ModelInfer`` (message parse, decode, data-plane checks, the ORT run inline,
encode, serialization, metrics) against ONNX Runtime's run alone, 3,000 calls each, p50:

    flock /work/bench.lock .venv/bin/python -m bench.agent.grpc_servicer_cost
"""

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from edge_agent import grpc_server
from edge_agent.grpc_proto import predict_v2_pb2 as pb
from edge_agent.server import AgentServer, request_limits
from edge_agent.settings import AgentSettings, LocalModel


async def main() -> None:
    server = AgentServer(AgentSettings(port=0, grpc_port=0))
    await server.start()
    await server.load_local([LocalModel("digits", "1", Path("/tmp/grpc-bench/digits.onnx"))])
    server.dataplane.started = True
    svc = grpc_server.InferenceServicer(server.dataplane, request_limits(server.settings), None)
    x = np.random.rand(1, 1, 8, 8).astype(np.float32)
    req = pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 8, 8])], raw_input_contents=[x.tobytes()])
    data = req.SerializeToString()
    class Ctx:
        def invocation_metadata(self) -> tuple[()]:
            return ()
    ctx = Ctx()
    mv = server.repository.resolve("digits")
    feeds = {"input": x}
    for label, fn in (("ORT run alone", None), ("servicer ModelInfer (parse + decode + checks + run + encode + metrics)", 1)):
        ts = []
        for _ in range(3000):
            s = time.perf_counter()
            if fn is None:
                mv.model.predict(feeds)
            else:
                r = pb.ModelInferRequest.FromString(data)
                resp = await svc.ModelInfer(r, ctx)
                resp.SerializeToString()
            ts.append(time.perf_counter() - s)
        print(f"{label}: p50 {statistics.median(ts)*1e6:.1f} us")
    await server.stop()
if __name__ == "__main__":
    asyncio.run(main())
