# syntax=docker/dockerfile:1
# Operator image (pip install .[operator]): the kopf operator, and `edgemodel store` (the default
# artifact store, aiohttp) and the chart's signing-key install hook run from it too. No torch.
# Non-root (uid 10001), read-only root file system (/tmp is a volume).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgemodel ./edgemodel
COPY edge_agent ./edge_agent
COPY operator ./operator
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: ".[operator]" \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') else 0)"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="edgemodel-operator" \
      org.opencontainers.image.description="edgemodel operator (kopf) and artifact store" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 edgemodel && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edgemodel
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["edgemodel"]
CMD ["operator"]
