"""`python -m splitproxy ...` as a subprocess, without blocking the event loop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(*args: str, timeout: float = 20.0, env: Mapping[str, str] | None = None) -> Run:
    """`python -m splitproxy ARGS` in a subprocess (`env`: its whole environment); the event
    loop keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitproxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
