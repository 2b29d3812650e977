"""Path normalisation (`splitproxy.config.paths`), table-driven: the form routes match on and the
upstream receives."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitproxy.config.paths import BadTarget, needs_normalising, normalise_prefix, normalise_target


@pytest.mark.parametrize(("target", "normal"), [
    (b"/", b"/"),
    (b"/api", b"/api"),
    (b"/api/", b"/api/"),
    (b"/web/../api", b"/api"),
    (b"/web/%2e%2e/api", b"/api"),
    (b"/web/%2E%2e/api", b"/api"),
    (b"/%77eb", b"/web"),
    (b"//api", b"/api"),
    (b"/./api", b"/api"),
    (b"/a/b/..", b"/a/"),
    (b"/a/.", b"/a/"),
    (b"/a/..", b"/"),
    (b"/a%2fb", b"/a%2Fb"),  # an encoded slash stays a character
    (b"/a%2Fb/../c", b"/c"),  # ... so `a%2Fb` is one segment
    (b"/%7e%41", b"/~A"),
    (b"/x?q=/../y&p=%2e", b"/x?q=/../y&p=%2e"),  # the query is never touched
    (b"*", b"*"),
])
def test_normal_form(target: bytes, normal: bytes) -> None:
    assert normalise_target(target) == normal


@pytest.mark.parametrize("target", [b"/..", b"/../a", b"/a/../../b", b"/%2e%2e/", b"/%zz",
                                    b"/a%2", b"/%", b"/a/%00", b"/a%00.txt?q"])
def test_ambiguous_targets_are_refused(target: bytes) -> None:
    with pytest.raises(BadTarget):
        normalise_target(target)


@pytest.mark.parametrize(("target", "needs"), [
    (b"/api/v1/users", False), (b"/", False), (b"/a%20b", True), (b"/a/./b", True),
    (b"//a", True), (b"/.well-known/x", True),
])
def test_the_fast_check_never_misses_a_target_that_changes(target: bytes, needs: bool) -> None:
    assert needs_normalising(target) is needs
    if not needs:
        assert normalise_target(target) == target


_ALPHABET = st.sampled_from([b"/", b".", b"%", b"a", b"2", b"e", b"?", b"="])


@given(st.lists(_ALPHABET, max_size=12).map(b"".join))
def test_the_fast_check_says_yes_exactly_for_a_percent_a_dot_segment_or_a_double_slash(
        target: bytes) -> None:
    # The definition it implements without a regex (and without `bytes in bytes`).
    assert needs_normalising(target) is (re.search(rb"%|/[./]", target) is not None)


def test_configured_prefixes_are_normalised_alike() -> None:
    assert normalise_prefix("/api/./v1//") == "/api/v1/"
    assert normalise_prefix("/%61pi") == "/api"
    assert normalise_prefix("/") == "/"
