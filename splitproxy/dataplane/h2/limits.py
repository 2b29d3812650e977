"""The HTTP/2 settings this proxy advertises and the flood counters that end abusive
connections cheaply (GOAWAY ENHANCE_YOUR_CALM). Constants, chosen here once; the README's
"HTTP/2 and gRPC" section says why each value."""

from __future__ import annotations

from h2.settings import SettingCodes

# RFC 9113 recommends at least 100; nginx allows 128, Go 250. Each stream holds at most one
# upstream connection (HTTP/1.1 upstreams), so this also bounds one client's share of a pool.
MAX_CONCURRENT_STREAMS = 100
# The protocol's default per-stream window (64 KiB - 1): a stream's body beyond it waits for
# its upstream to take it (the window update is held back while the exchange holds bytes).
INITIAL_WINDOW_SIZE = 65535
# The connection window is opened wider than every stream's window together, so a stream
# whose upstream is slow never stalls the other streams of its connection.
CONNECTION_WINDOW = MAX_CONCURRENT_STREAMS * INITIAL_WINDOW_SIZE + (1 << 20)
# The protocol's minimum and default; larger frames buy nothing on a proxy that re-frames.
MAX_FRAME_SIZE = 16384

# Flood counters: per connection, over a window of FLOOD_WINDOW seconds.
FLOOD_WINDOW = 10.0
# SETTINGS and PING frames are answered (ACKed) by the protocol itself: each costs a write.
# Legitimate clients send a handful (gRPC's BDP probe: at most one ping per round trip).
MAX_SETTINGS = 100
MAX_PINGS = 1000
# Rapid reset (CVE-2023-44487): streams the client opens and resets before their answer is
# complete. Like Envoy's premature-reset rule: more than MIN_RESETS in the window, and more than
# half of the streams opened in it, ends the connection. A client that cancels a fraction of
# its calls (gRPC deadlines) never reaches it.
MIN_RESETS = 100


def settings(max_header_list: int) -> dict[SettingCodes, int]:
    """What the server announces in its first SETTINGS frame."""
    return {
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_SIZE,
        SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
        # Same bound as an HTTP/1.1 request head (limits.max_header); HPACK decoding stops
        # as soon as the decoded list passes it (the HPACK bomb).
        SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
        SettingCodes.ENABLE_PUSH: 0,
    }


class FloodCounter:
    """Counts of one connection's cheap-to-send, costly-to-answer frames in the current
    window; `over` names the first limit passed (None: all within)."""

    __slots__ = ("since", "settings", "pings", "resets", "opened")

    def __init__(self, now: float) -> None:
        self.since = now
        self.settings = self.pings = self.resets = self.opened = 0

    def tick(self, now: float) -> None:
        if now - self.since >= FLOOD_WINDOW:
            self.since = now
            self.settings = self.pings = self.resets = self.opened = 0

    def over(self) -> str | None:
        if self.settings > MAX_SETTINGS:
            return "SETTINGS flood"
        if self.pings > MAX_PINGS:
            return "PING flood"
        if self.resets > MIN_RESETS and self.resets * 2 > self.opened:
            return "rapid reset"
        return None
