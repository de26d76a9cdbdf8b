"""ed25519 signing of artifact manifests (converter signs, agents verify); HMAC of capture bundles.

The signature covers the exact bytes of ``manifest.json`` and is stored base64-encoded in
``manifest.json.sig`` and in each EdgeAgent assignment. Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), e.g. mounted from a Secret and a ConfigMap.

Capture bundles travel the other way (agents upload, the training Job reads), and agents hold no private
key: their manifest is signed with HMAC-SHA256 keyed by the artifact store's write token, the one secret
both the uploading agent and the operator's training Job already hold (``sign_bundle`` / ``verify_bundle``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgemodel.errors import UserError


class SignatureError(Exception):
    """The signature does not match the data and key."""


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new ed25519 key pair as PEM files (private key mode 0600)."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an ed25519 private key (PEM); a clear error when it is missing or of another type."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"signing key {path}: cannot read an ed25519 PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"signing key {path}: is not an ed25519 key; generate one with `edgemodel convert --generate-key`")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """Parse an ed25519 public key from PEM bytes."""
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("public key is not an ed25519 key")
    return key


def sign(data: bytes, key: Ed25519PrivateKey) -> str:
    """Base64 ed25519 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify(data: bytes, signature_b64: str, public_key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless ``signature_b64`` is a valid signature of ``data``."""
    try:
        raw = base64.b64decode(signature_b64, validate=True)
        public_key.verify(raw, data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not match the manifest and the fleet's public key") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


BUNDLE_CONTEXT = b"edgemodel capture bundle v1\n"
"""Domain separation: a bundle MAC is never valid as any other use of the store token."""


def sign_bundle(manifest: bytes, token: str) -> str:
    """Hex HMAC-SHA256 of a capture bundle's manifest bytes, keyed by the store write token."""
    if not token:
        raise SignatureError("a capture bundle is signed with the store token, and none is configured")
    return hmac.new(token.encode(), BUNDLE_CONTEXT + manifest, hashlib.sha256).hexdigest()


def verify_bundle(manifest: bytes, signature: str, token: str) -> None:
    """Raise SignatureError unless ``signature`` is the bundle MAC of ``manifest`` under ``token``."""
    if not hmac.compare_digest(sign_bundle(manifest, token), signature.strip()):
        raise SignatureError("the capture bundle's signature does not match its manifest and the store token")
