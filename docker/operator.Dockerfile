# syntax=docker/dockerfile:1
# Operator image (pip install .[operator]): the kopf operator, and `edgemodel store` (the default
# artifact store, aiohttp) and the chart's signing-key install hook run from it too. No torch.
# Non-root (uid 10001), read-only root file system (/tmp is a volume). BASE_IMAGE: see agent.Dockerfile.
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
LABEL org.opencontainers.image.title="edgemodel-operator" \
      org.opencontainers.image.description="edgemodel operator (kopf) and artifact store" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel
# Dependencies in a layer of their own: it changes only with pyproject.toml.
COPY pyproject.toml docker/requirements.py /tmp/req/
RUN python -m venv /opt/venv \
 && python /tmp/req/requirements.py /tmp/req/pyproject.toml operator > /tmp/req/operator.txt \
 && /opt/venv/bin/pip install -q --only-binary=:all: -r /tmp/req/operator.txt \
 && rm -rf /tmp/req
COPY --from=wheel /dist /tmp/dist
RUN /opt/venv/bin/pip install -q --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') else 0)"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["edgemodel"]
CMD ["operator"]
