"""The proxy's own failures: which errors are this machine's (not an endpoint's), and a log
that says so without flooding."""

from __future__ import annotations

import errno
import logging
from typing import Final

# Failures of this machine, not of the endpoint: out of file descriptors, socket buffers,
# memory or local ports. Answered 503 and counted as the proxy's own, never against a version.
LOCAL_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)
RETRY_AFTER: Final = 1  # seconds, on the proxy's own 503s (overload, local resource failure)


class Throttled:
    """One warning a second at most: a flood of local failures must not flood the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.next = 0.0
        self.skipped = 0

    def warning(self, now: float, detail: str) -> None:
        if now < self.next:
            self.skipped += 1
            return
        self.logger.warning("local resource failure, answered 503: %s (%d more like it not "
                            "logged)", detail, self.skipped)
        self.next = now + 1.0
        self.skipped = 0


local_log = Throttled(logging.getLogger("splitproxy.local"))
