"""Watching the config file: directory events (in-place write, rename, ConfigMap symlink swap)
and SIGHUP both lead to one call of `on_change`, debounced."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import watchfiles

from splitproxy.control.tasks import cancel_and_wait

log = logging.getLogger("splitproxy.control.reload")

# watchfiles logs "N changes detected" at INFO for every batch: ours is the line that says
# what the changes did (a reload applied or refused).
logging.getLogger("watchfiles").setLevel(logging.WARNING)

MAX_LINKS = 40  # symlinks followed from the config before giving up (as the kernel does)


def reached_through(path: Path) -> set[str]:
    """The names in the config's directory that the config is read through: its own name and,
    along its chain of symlinks, each one's first step inside the directory. For a mounted
    ConfigMap, `config.yaml -> ..data/config.yaml` and `..data -> ..2026_01_02_...`: the
    kubelet's swap renames a new `..data` into place, and that is the event that matters."""
    directory = Path(os.path.abspath(path.parent))
    names = {path.name}
    todo = [Path(path.name)]
    for _ in range(MAX_LINKS):
        if not todo:
            break
        rel = todo.pop()
        for i in range(1, len(rel.parts) + 1):
            prefix = directory.joinpath(*rel.parts[:i])
            try:
                target = os.readlink(prefix)
            except OSError:
                continue  # not a symlink (or gone): the next component
            resolved = Path(os.path.normpath(prefix.parent / target / Path(*rel.parts[i:])))
            try:
                inside = resolved.relative_to(directory)
            except ValueError:
                break  # the chain leaves the directory: events there are not watched
            if inside.parts:
                names.add(inside.parts[0])
                todo.append(inside)
            break
    return names


class ConfigWatcher:
    """Calls `on_change()` after changes to the config settle.

    The *directory* is watched, not the file: editors write a temp file and rename it over the
    config, and Kubernetes swaps a `..data` symlink to a new folder; a watch on the file itself
    would follow the old inode and miss both. Events on other files of the directory (state
    files, an editor's swap files, a log the process writes there) are dropped before they
    are counted: a log file in the config's directory cannot start a loop. Whether the content
    changed is decided by the caller, which compares it with what it serves.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], None],
        *,
        settle_ms: int = 100,
        force_polling: bool | None = None,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.settle_ms = settle_ms
        self.force_polling = force_polling
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._directory = Path(os.path.abspath(path.parent))
        # Events on other files, by name: dropped, but counted, so that "seen and ignored"
        # can be told from "not seen yet".
        self.ignored: Counter[str] = Counter()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await cancel_and_wait([self._task])

    def relevant(self, change: watchfiles.Change, path: str) -> bool:
        """Whether an event in the directory may have changed what the config path reads."""
        try:
            rel = Path(path).relative_to(self._directory)
        except ValueError:
            return False
        # Read afresh: after a swap the chain goes through a new folder.
        if rel.parts and rel.parts[0] in reached_through(self.path):
            return True
        self.ignored[rel.parts[0] if rel.parts else "."] += 1
        return False

    async def _run(self) -> None:
        directory = self._directory
        while not self._stop.is_set():
            try:
                async for changes in watchfiles.awatch(
                    directory,
                    watch_filter=self.relevant,
                    stop_event=self._stop,
                    debounce=1000,
                    step=self.settle_ms,
                    force_polling=self.force_polling,
                    poll_delay_ms=200,
                    ignore_permission_denied=True,
                ):
                    log.debug("config changed on disk: %s", sorted(p for _, p in changes))
                    self.on_change()
            except (OSError, RuntimeError) as exc:
                # The directory itself went away (unmounted, recreated): look again shortly.
                log.warning("watching %s failed (%s); retrying", directory, exc)
                await asyncio.sleep(1.0)
