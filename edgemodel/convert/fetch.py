"""Fetch a model or data file from file://, http(s):// or s3:// into the work folder."""

from __future__ import annotations

import logging
import shutil
import urllib.parse
from pathlib import Path

from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.signing import sha256_file
from edgemodel.store.client import StoreError, download

log = logging.getLogger(__name__)


def local_path(uri: str) -> Path:
    """The path of a file:// URI (``file:///abs/path``)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{uri!r}: file:// URIs need an absolute path, e.g. file:///data/model.pt")
    return Path(urllib.parse.unquote(parsed.path))


def fetch(uri: str, dest: Path, field: str, missing: Reason) -> tuple[Path, str]:
    """Copy ``uri`` to ``dest``; return the path and its sha256.

    ``field`` names the spec field in messages; ``missing`` is the reason used when the file
    does not exist (a server that does not answer gives SourceUnavailable, retryable).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlparse(uri).scheme
    try:
        if scheme == "file":
            path = local_path(uri)
            if not path.is_file():
                raise ConversionError(missing, f"{field}: {uri} does not exist or is not a file; check the path")
            shutil.copyfile(path, dest)
        elif scheme in ("http", "https"):
            download(uri, dest, retries=2)
        elif scheme == "s3":
            from edgemodel.store.s3 import download_s3

            download_s3(uri, dest)
        else:
            raise ConversionError(Reason.INVALID_SPEC, f"{field}: unsupported URI {uri!r}; use file://, http(s):// or s3://")
    except StoreError as exc:
        if exc.retryable:
            raise ConversionError(Reason.SOURCE_UNAVAILABLE, f"{field}: {exc}; retry when the server is back") from exc
        raise ConversionError(missing, f"{field}: {exc}") from exc
    except PermissionError as exc:
        raise ConversionError(missing, f"{field}: {uri} is not readable ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConversionError(Reason.INVALID_SPEC, f"{field}: {exc}") from exc
    digest = sha256_file(dest)
    log.info("Fetched %s (%s bytes, sha256 %s)", uri, f"{dest.stat().st_size:,}", digest[:12])
    return dest, digest
