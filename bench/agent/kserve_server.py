"""KServe's Python ModelServer (PyPI ``kserve``) serving an ONNX file with ONNX Runtime: the peer.

Written the way KServe's own servers (sklearnserver, lgbserver) are: a ``kserve.Model`` whose
``load()`` creates the session and whose synchronous ``predict()`` runs it, on the Open
Inference Protocol v2. Runs in a separate virtualenv because kserve pins its own dependencies::

    python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve onnxruntime numpy
    /tmp/kserve-venv/bin/python bench/agent/kserve_server.py --model_path digits.onnx --model_name digits --http_port 8081
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxRuntimeModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session: Any = None
        self.load()

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        outputs = self.session.run(None, feeds)
        binary = bool((payload.parameters or {}).get("binary_data_output", False))
        infer_outputs = []
        for name, array in zip(self.output_names, outputs, strict=True):
            out = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            out.set_data_from_numpy(array, binary_data=binary)
            infer_outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=infer_outputs, response_id=payload.id or "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxRuntimeModel(args.model_name, args.model_path, args.threads)])
