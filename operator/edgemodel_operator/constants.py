"""Names the operator puts on objects: labels, annotations, the finalizer, the field manager."""

from __future__ import annotations

from edgemodel.api import GROUP

FINALIZER = f"{GROUP}/finalizer"
"""Blocks deletion of an EdgeModel until it is unassigned from every EdgeAgent."""

MANAGER = "edgemodel-operator"
"""Value of app.kubernetes.io/managed-by and of the client's field manager."""

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MODEL = f"{GROUP}/model"
LABEL_REVISION = f"{GROUP}/revision"

ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
"""On a conversion Job: hash of the spec it converts (a stale Job is replaced, never reused)."""
ANNOTATION_GENERATION = f"{GROUP}/generation"
"""On a conversion Job: the EdgeModel generation it was created for."""
ANNOTATION_REVISION_ORIGIN = f"{GROUP}/revision-origin"
"""On an EdgeModel, set by a controller together with spec.source: JSON of a RevisionOrigin plus the
``sourceUri`` it belongs to; the revision opened for that source records it as ``origin``."""

SIGNING_KEY_DIR = "/var/run/edgemodel/signing"
SIGNING_KEY_FILE = "private.pem"
STORE_TOKEN_KEY = "token"
CONVERTER_CONTAINER = "convert"

EDGEMODELS = ("edgemodel.io", "v1alpha1", "edgemodels")
EDGEAGENTS = ("edgemodel.io", "v1alpha1", "edgeagents")
NODES = ("", "v1", "nodes")
"""Node labels (set by an admin, never by an agent) are what spec.selector and the cloud tier select on."""
