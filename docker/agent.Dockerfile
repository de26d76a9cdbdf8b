# syntax=docker/dockerfile:1
# Edge agent image: ONNX Runtime serving, no torch, no kopf (pip install .[agent]).
# Multi-arch: every dependency has manylinux wheels for amd64 and arm64, so
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/agent.Dockerfile -t REPO/agent:TAG .
# builds both without compilers. Non-root (uid 10001), works with a read-only root file system.
# BASE_IMAGE: any Debian bookworm image with Python 3.11 and venv (docs/images.md); the local builds
# use one made with debootstrap (edgemodel_dev.images). GPU nodes: agent-gpu.Dockerfile builds on this image.
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
LABEL org.opencontainers.image.title="edgemodel-agent" \
      org.opencontainers.image.description="edgemodel edge agent: ONNX Runtime over the Open Inference Protocol v2" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel \
 && mkdir -p /var/lib/edgemodel-agent && chown 10001:10001 /var/lib/edgemodel-agent
# Dependencies in a layer of their own: it changes only with pyproject.toml.
COPY pyproject.toml docker/requirements.py /tmp/req/
RUN python -m venv /opt/venv \
 && python /tmp/req/requirements.py /tmp/req/pyproject.toml agent > /tmp/req/agent.txt \
 && /opt/venv/bin/pip install -q --only-binary=:all: -r /tmp/req/agent.txt \
 && rm -rf /tmp/req
COPY --from=wheel /dist /tmp/dist
RUN /opt/venv/bin/pip install -q --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') or u.find_spec('kopf') else 0)"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EDGEMODEL_AGENT_HOST=0.0.0.0 EDGEMODEL_AGENT_CACHE_DIR=/var/lib/edgemodel-agent
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/edgemodel-agent"]
ENTRYPOINT ["edgemodel"]
CMD ["agent", "--in-cluster"]
