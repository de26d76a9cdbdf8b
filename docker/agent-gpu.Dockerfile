# syntax=docker/dockerfile:1
# Edge agent for NVIDIA GPU nodes: the agent image with onnxruntime-gpu (CUDA 12 and cuDNN 9 from
# NVIDIA's wheels, so any base works; the node needs the NVIDIA driver and container toolkit, and the
# pod a GPU: runtimeClassName nvidia, resources.limits nvidia.com/gpu). The agent picks the CUDA
# execution provider when it loads and falls back to CPU, so this image also serves on CPU nodes.
# amd64 only (NVIDIA's wheels). See docs/images.md:
#   docker build -f docker/agent.Dockerfile -t REPO/agent:TAG .
#   docker build -f docker/agent-gpu.Dockerfile --build-arg AGENT_IMAGE=REPO/agent:TAG -t REPO/agent:TAG-gpu .
ARG AGENT_IMAGE=ghcr.io/edgemodel/agent:0.1.0
FROM ${AGENT_IMAGE}
ARG PIP_FIND_LINKS
ARG PIP_CERT
USER 0:0
# Same onnxruntime version as the CPU image; onnxruntime-gpu provides the same `onnxruntime` module.
RUN version="$(/opt/venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')" \
 && /opt/venv/bin/pip uninstall -q -y onnxruntime \
 && /opt/venv/bin/pip install -q --only-binary=:all: "onnxruntime-gpu[cuda,cudnn]==${version}" \
 && /opt/venv/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"
LABEL org.opencontainers.image.title="edgemodel-agent-gpu" \
      org.opencontainers.image.description="edgemodel edge agent with ONNX Runtime GPU (CUDA 12)"
USER 10001:10001
