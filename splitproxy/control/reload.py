"""Watching the config file: directory events (in-place write, rename, ConfigMap symlink swap)
and SIGHUP both lead to one call of `on_change`, debounced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

log = logging.getLogger("splitproxy.control.reload")


class ConfigWatcher:
    """Calls `on_change()` after changes in the config's directory settle.

    The *directory* is watched, not the file: editors write a temp file and rename it over the
    config, and Kubernetes swaps a `..data` symlink to a new folder; a watch on the file itself
    would follow the old inode and miss both. Which changes matter is decided by the caller,
    which compares the file's content with what it serves.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], None],
        *,
        ignore: Callable[[Path], bool] = lambda p: False,
        settle_ms: int = 100,
        force_polling: bool | None = None,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.ignore = ignore
        self.settle_ms = settle_ms
        self.force_polling = force_polling
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        directory = self.path.absolute().parent
        while not self._stop.is_set():
            try:
                async for changes in watchfiles.awatch(
                    directory,
                    stop_event=self._stop,
                    debounce=1000,
                    step=self.settle_ms,
                    force_polling=self.force_polling,
                    poll_delay_ms=200,
                    ignore_permission_denied=True,
                ):
                    relevant = [c for c in changes if not self.ignore(Path(c[1]))]
                    if relevant:
                        log.debug("config directory changed: %s", relevant)
                        self.on_change()
            except (OSError, RuntimeError) as exc:
                # The directory itself went away (unmounted, recreated): look again shortly.
                log.warning("watching %s failed (%s); retrying", directory, exc)
                await asyncio.sleep(1.0)
