"""Where bytes move: listening sockets, worker processes, hot-path counters."""
