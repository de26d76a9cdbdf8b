# syntax=docker/dockerfile:1
# Edge agent image: ONNX Runtime serving, no torch, no kopf (pip install .[agent]).
# Multi-arch: every dependency has manylinux wheels for amd64 and arm64, so
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/agent.Dockerfile -t REPO/agent:TAG .
# builds both without compilers. Non-root (uid 10001), works with a read-only root file system.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgemodel ./edgemodel
COPY edge_agent ./edge_agent
COPY operator ./operator
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: ".[agent]" \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') or u.find_spec('kopf') else 0)"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="edgemodel-agent" \
      org.opencontainers.image.description="edgemodel edge agent: ONNX Runtime over the Open Inference Protocol v2" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel \
 && mkdir -p /var/lib/edgemodel-agent && chown 10001:10001 /var/lib/edgemodel-agent
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EDGEMODEL_AGENT_HOST=0.0.0.0 EDGEMODEL_AGENT_CACHE_DIR=/var/lib/edgemodel-agent
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/edgemodel-agent"]
ENTRYPOINT ["edgemodel"]
CMD ["agent", "--in-cluster"]
