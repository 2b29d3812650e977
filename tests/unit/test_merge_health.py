"""Two workers' views of one endpoint merge into the one `/status` shows: out of rotation if
out in either, the failing side's last probe shown."""

from __future__ import annotations

from splitproxy.dataplane.plane import EndpointHealth
from splitproxy.dataplane.workers import merge_health


def view(up: bool = True, passive_up: bool = True, active: str = "up",
         last: str = "success", error: str | None = None) -> EndpointHealth:
    return EndpointHealth("shop", "stable", "127.0.0.1:9001", up, 0, 0, passive_up, active,
                          last, error)


def test_down_in_one_worker_is_down() -> None:
    down = view(up=False, active="down", last="failure", error="status 503")
    for merged in (merge_health(view(), down), merge_health(down, view())):
        assert (merged.up, merged.active, merged.last_result, merged.last_error) == (
            False, "down", "failure", "status 503")


def test_ejected_in_one_worker_is_out_and_passive_down() -> None:
    merged = merge_health(view(), view(up=False, passive_up=False))
    assert (merged.up, merged.passive_up, merged.active) == (False, False, "up")


def test_no_check_in_either_stays_off() -> None:
    off = view(active="off", last="none")
    assert merge_health(off, off).active == "off"
