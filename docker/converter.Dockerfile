# syntax=docker/dockerfile:1
# Conversion Job image: PyTorch (CPU, pinned) -> ONNX -> quantised candidates, measured, signed
# (pip install .[convert]). The operator runs it as `edgemodel convert --job ...`. amd64 (and arm64:
# torch publishes CPU wheels for both). Non-root (uid 10001), read-only root file system (/tmp is a volume).
# Only the CPU build of torch (no CUDA libraries), without its C++ headers (nothing is compiled at run time).
# BASE_IMAGE: see agent.Dockerfile. TORCH_INDEX_URL: where torch==2.13.0 (CPU) comes from.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS wheel
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The build backend in a cached layer: a source change only rebuilds the wheel (the same stage in every image).
RUN python -m venv /opt/build && /opt/build/bin/pip install -q "setuptools>=77" wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgemodel ./edgemodel
COPY edge_agent ./edge_agent
COPY operator ./operator
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /dist .

FROM ${BASE_IMAGE}
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="edgemodel-converter" \
      org.opencontainers.image.description="edgemodel conversion Job: PyTorch to measured, signed ONNX artifacts" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel
# torch first, from the CPU index, so that `.[convert]` (torch==2.13.0) never pulls a CUDA build;
# dependencies in a layer of their own: it changes only with pyproject.toml.
COPY pyproject.toml docker/requirements.py /tmp/req/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && python /tmp/req/requirements.py /tmp/req/pyproject.toml convert > /tmp/req/convert.txt \
 && /opt/venv/bin/pip install -q -r /tmp/req/convert.txt \
 && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__" \
 && rm -rf /tmp/req /opt/venv/lib/python3*/site-packages/torch/include \
 && find /opt/venv -name tests -path "*/site-packages/*/tests" -prune -exec rm -rf {} +
COPY --from=wheel /dist /tmp/dist
RUN /opt/venv/bin/pip install -q --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor
USER 10001:10001
ENTRYPOINT ["edgemodel"]
CMD ["convert", "--help"]
