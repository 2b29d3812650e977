"""The start-up heap, put out of the cyclic garbage collector's reach once the proxy serves.

A full collection walks every object the collector tracks. At start-up that is ~86,000 of
them: modules, the config's pydantic models, the routing table, aiohttp's admin app. Under
load the requests in flight keep promoting survivors, so CPython ran a full collection about
once a second at 512 connections, each a pause of 50-57 ms in the loop, which became the p99
(`python loadtests/bench.py`, README "GC pauses"). Those objects live for the process's life,
so walking them finds nothing: `gc.freeze()` moves them to a generation the collector skips
(what Instagram's servers do), and a full collection then walks only what was made since,
a pause of ~3 ms.

The cost: an object of the start-up heap that later becomes garbage in a reference cycle is
never freed (plain garbage still is, by reference counting). It is bounded by what was there
at start; configs applied by a hot reload are never frozen.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("splitproxy.dataplane.heap")


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the rest; returns how many objects the
    collector now skips."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen: %d objects left out of garbage collection", frozen)
    return frozen
