"""The edge agent: ONNX Runtime serving on the Open Inference Protocol (no torch, no kopf)."""
