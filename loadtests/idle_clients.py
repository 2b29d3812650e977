"""Hold many idle keep-alive client connections open, for the benchmark's memory measurement.

    python loadtests/idle_clients.py PORT [--connections 10000]

Raises its own RLIMIT_NOFILE, opens the connections to 127.0.0.1:PORT (a bounded number at a
time), sends one keep-alive ``GET /`` on each and reads the whole answer, so each connection is
a real, idle keep-alive connection on the server. Then prints one line,
``ready opened=N failed=M``, and holds them until SIGTERM/SIGINT, when it prints
``closing open=K`` (how many the server had not closed meanwhile) and exits.

Also here, for the benchmark (the parent): `raise_nofile`, `rss_tree` (RSS from /proc; Linux
only) and `measure_idle`, which runs this helper against a server and reads the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"
RSS_TARGET_MB = 150.0  # splitproxy's peak RSS with 10,000 idle connections open
IDLE_HOLD = 3.0  # seconds the connections stay open before the RSS is read (splitproxy
# drops an idle connection's parser at its sweeper's next tick, within a second)
SETTLE_WAIT, SETTLE_KB = 1.0, 256  # the baseline: the RSS moved at most this in that time


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to `want` (the hard one too, if allowed);
    children inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as far as it goes
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: ppid is the 2nd field after ")".
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_tree(pid: int) -> tuple[int, int]:
    """(current RSS, sum of each process's peak RSS) of `pid` and its descendants, in KiB."""
    pids = _descendants(pid)
    return (sum(_status_kb(p, "VmRSS") for p in pids),
            sum(_status_kb(p, "VmHWM") for p in pids))


def settled_rss(pid: int, timeout: float = 15.0) -> int:
    """The RSS of `pid`'s tree once it stops growing (two readings SETTLE_WAIT apart within
    SETTLE_KB): a proxy that just started still grows for seconds (splitproxy's config-check
    helper processes, its first timers), which would be counted against the connections."""
    deadline = time.monotonic() + timeout
    last, _ = rss_tree(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_WAIT)
        now, _ = rss_tree(pid)
        if abs(now - last) <= SETTLE_KB:
            return now
        last = now
    return last


class Starter(Protocol):
    """What `measure_idle` needs of the benchmark's process keeper."""

    logdir: Path

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]: ...

    def log_tail(self, name: str, lines: int = 20) -> str: ...


def measure_idle(children: Starter, name: str, pid: int, port: int,
                 connections: int, tls: bool = False) -> dict[str, Any]:
    """RSS of `pid`'s process tree before and while `connections` idle keep-alive connections
    are held open to `port` by an `idle_clients.py` helper; sizes in MB (10^6 bytes)."""
    before = settled_rss(pid)
    helper = f"idle-{name}"
    argv = [sys.executable, str(Path(__file__).resolve()), str(port),
            "--connections", str(connections)] + (["--tls"] if tls else [])
    proc = children.start(helper, argv)
    log = children.logdir / f"{helper}.log"
    deadline = time.monotonic() + 60.0 + connections / 500
    ready = ""
    while True:
        text = log.read_text() if log.exists() else ""
        ready = next((ln for ln in text.splitlines() if ln.startswith("ready ")), "")
        if ready:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{helper} did not open its connections:\n{children.log_tail(helper)}"
            )
        time.sleep(0.2)
    time.sleep(IDLE_HOLD)
    held, peak = rss_tree(pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    closing = next((ln for ln in log.read_text().splitlines() if ln.startswith("closing ")), "")
    opened = int(m.group(1)) if (m := re.search(r"opened=(\d+)", ready)) else 0
    still = int(m.group(1)) if (m := re.search(r"open=(\d+)", closing)) else None
    mb = 1024 / 1e6
    return {
        "target": name,
        "connections": connections,
        "opened": opened,
        "open_at_end": still,
        "rss_before_mb": before * mb,
        "rss_mb": held * mb,
        "peak_rss_mb": peak * mb,
        "kb_per_connection": (held - before) * 1.024 / max(1, opened),
    }


def memory_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | idle conns (held to the end) | RSS before | RSS with them | peak RSS | "
        "per connection |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        held = f"{r['opened']:,} ({r['open_at_end']:,})" if r["open_at_end"] is not None else (
            f"{r['opened']:,}")
        target = ""
        if r["target"] == "splitproxy":
            target = f" ({'under' if r['peak_rss_mb'] < RSS_TARGET_MB else 'OVER'} the " \
                     f"{RSS_TARGET_MB:.0f} MB target)"
        lines.append(
            f"| {r['target']} | {held} | {r['rss_before_mb']:.1f} MB | {r['rss_mb']:.1f} MB "
            f"| {r['peak_rss_mb']:.1f} MB{target} | {r['kb_per_connection']:.1f} kB |"
        )
    return "\n".join(lines)


async def _one(port: int, gate: asyncio.Semaphore,
               held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
               tls: ssl.SSLContext | None = None) -> bool:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                HOST, port, ssl=tls, server_hostname="localhost" if tls else None), 10)
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            return False
        if b"connection: close" in head.lower():
            writer.close()
            return False
        held.append((reader, writer))
        return True


async def hold(port: int, connections: int, concurrency: int, tls: bool = False) -> int:
    gate = asyncio.Semaphore(concurrency)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    ctx = None
    if tls:  # the benchmark's own throwaway certificate: nothing to verify
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    results = await asyncio.gather(*(_one(port, gate, held, ctx) for _ in range(connections)))
    opened = sum(results)
    print(f"ready opened={opened} failed={connections - opened}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    still = sum(1 for reader, _ in held if not reader.at_eof())
    print(f"closing open={still}", flush=True)
    for _, writer in held:
        with contextlib.suppress(Exception):
            writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("port", type=int)
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=200, help="connections opened at a time")
    p.add_argument("--tls", action="store_true", help="TLS connections (certificate unchecked)")
    args = p.parse_args(argv)
    limit = raise_nofile(args.connections + 256)
    if limit < args.connections + 16:
        sys.stderr.write(f"RLIMIT_NOFILE is {limit}: cannot hold {args.connections}\n")
        return 2
    sys.stderr.write(f"idle_clients: pid {os.getpid()}, RLIMIT_NOFILE {limit}\n")
    return asyncio.run(hold(args.port, args.connections, args.concurrency, args.tls))


if __name__ == "__main__":
    sys.exit(main())
