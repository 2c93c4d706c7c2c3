"""Endpoints running in client namespaces as subprocesses, driven over JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class Endpoint:
    """`ip netns exec NAMESPACE python -m MODULE ARGS…`; read its JSON events, write lines."""

    def __init__(self, label: str, namespace: str, module: str, *args: str) -> None:
        self.label = label
        self.command = ["ip", "netns", "exec", namespace, sys.executable, "-m", module, *args]
        self.process: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> Endpoint:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,  # SDP lines
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        return self

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def diagnostics(self) -> str:
        tail = "\n".join(self._stderr[-40:])
        return f"[{self.label}] events={self.events}\n[{self.label}] stderr:\n{tail}"

    async def next_event(self, wanted: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event named `wanted`; fails on an `error` event, exit or timeout."""
        assert self.process is not None and self.process.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: no {wanted!r} within {timeout} s\n" + self.diagnostics()
                )
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not raw:
                await self._wait_exit(5)
                raise AssertionError(
                    f"{self.label} exited ({self.process.returncode}) before {wanted!r}\n"
                    + self.diagnostics()
                )
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a library printing to stdout
            self.events.append(event)
            if event.get("event") == wanted:
                return dict(event)
            if event.get("event") == "error":
                raise AssertionError(
                    f"{self.label} failed: {event['error']}\n" + self.diagnostics()
                )

    async def send(self, **message: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def _wait_exit(self, timeout: float) -> None:  # noqa: ASYNC109
        assert self.process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Close stdin (the endpoint's cue to hang up), then kill it if it does not exit."""
        process = self.process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        await self._wait_exit(timeout)
        if process.returncode is None:
            process.kill()
            await process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 5)
