"""The store tests' shared fixture: a running store with a write token, over a fresh root folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.running import TOKEN, running_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "root"
    with running_store(root, TOKEN) as url:
        yield url, root
