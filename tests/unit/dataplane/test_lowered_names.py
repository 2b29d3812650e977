"""`headers.lowered`: `lower()` with a bounded cache of the names seen."""

from __future__ import annotations

from splitproxy.dataplane.http import headers


def test_the_same_object_for_a_name_seen_before() -> None:
    first = headers.lowered(b"Content-Type")
    assert first == b"content-type"
    assert headers.lowered(b"Content-Type") is first


def test_the_cache_stays_bounded_whatever_the_names() -> None:
    for i in range(3 * headers._MAX_LOWERED):
        assert headers.lowered(b"X-Name-%d" % i) == b"x-name-%d" % i
        assert len(headers._LOWERED) <= headers._MAX_LOWERED


def test_a_long_name_is_lowered_not_kept() -> None:
    name = b"X-" + b"A" * headers._MAX_LOWERED_NAME
    assert headers.lowered(name) == name.lower()
    assert name not in headers._LOWERED
