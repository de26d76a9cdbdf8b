# syntax=docker/dockerfile:1
# Conversion Job image: PyTorch (CPU, pinned) -> ONNX -> quantised candidates, measured, signed
# (pip install .[convert]). The operator runs it as `edgemodel convert --job ...`. amd64 (and arm64:
# torch publishes CPU wheels for both). Non-root (uid 10001), read-only root file system (/tmp is a volume).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgemodel ./edgemodel
COPY edge_agent ./edge_agent
COPY operator ./operator
# torch first, from the CPU index, so that `.[convert]` (torch==2.13.0) never pulls a CUDA build.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/venv/bin/pip install ".[convert]" \
 && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="edgemodel-converter" \
      org.opencontainers.image.description="edgemodel conversion Job: PyTorch to measured, signed ONNX artifacts" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor
USER 10001:10001
ENTRYPOINT ["edgemodel"]
CMD ["convert", "--help"]
