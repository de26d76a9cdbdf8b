"""Run the artifact store (the real aiohttp server) in a background thread on 127.0.0.1 for tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from edgemodel.store.server import serve

TOKEN = "s3cr3t-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def running_store(root: Path, token: str = "", max_upload_bytes: int = 8 << 30) -> Iterator[str]:
    """Yield the base URL of a store serving ``root``; stop it and join its thread afterwards."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        await serve(root, "127.0.0.1", 0, token, on_ready=lambda url: (state.__setitem__("url", url), ready.set()),
                    stop=stop, **({"max_upload_bytes": max_upload_bytes} if max_upload_bytes != 8 << 30 else {}))

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surface start-up failures to the test
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, name="edgemodel-store", daemon=True)
    thread.start()
    if not ready.wait(15) or "error" in state:
        raise RuntimeError(f"store did not start: {state.get('error')}")
    try:
        yield str(state["url"])
    finally:
        stop = state["stop"]
        assert isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        loop.close()
