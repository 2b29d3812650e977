"""requestid: a sane id from the client is kept, anything else replaced by a made one, shaped
as a version-4 UUID, unique per process (a new prefix when the counter runs out)."""

from __future__ import annotations

import os
import uuid

import pytest

from splitproxy.dataplane.http import requestid


@pytest.mark.parametrize("given", [b"8f14e45f-ceea-467f-a0d7-6d0a1b6a5a11", b"Root=1-5759e988",
                                   b"a" * 200, b"x"])
def test_a_sane_id_is_kept(given: bytes) -> None:
    assert requestid.resolve(given) is given


@pytest.mark.parametrize("given", [None, b"", b"a" * 201, b"two words", b'quo"te', b"semi;colon",
                                   b"caf\xe9"])
def test_anything_else_gets_a_made_one(given: bytes | None) -> None:
    made = requestid.resolve(given)
    assert made != given and uuid.UUID(made.decode()).version == 4


def test_made_ids_count_up_and_a_spent_counter_takes_a_new_prefix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = requestid.new_id(), requestid.new_id()
    assert first[:24] == second[:24] and int(second[24:], 16) == int(first[24:], 16) + 1
    monkeypatch.setattr(requestid._IDS, "n", 2**48 - 2)
    last = requestid.new_id()
    renewed = requestid.new_id()
    assert last.endswith(b"-ffffffffffff") and renewed.endswith(b"-000000000001")
    assert renewed[:24] != last[:24] and uuid.UUID(renewed.decode()).version == 4


def test_made_ids_are_consecutive_across_the_cached_part() -> None:
    """The id less its last two hex digits is made once per 256: the count goes on past it."""
    ids = [requestid.new_id() for _ in range(600)]
    counts = [int(made[24:], 16) for made in ids]
    assert counts == list(range(counts[0], counts[0] + 600))
    assert len({made[:24] for made in ids}) == 1
    assert all(uuid.UUID(made.decode()).version == 4 for made in ids)


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """A fork copies the prefix and the counter: the child takes a new prefix at once."""
    parents = requestid.new_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id, then leave without running anything else
        try:
            os.write(write_end, requestid.new_id())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        childs = os.read(read_end, 100)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert childs[:24] != parents[:24] and childs.endswith(b"-000000000001")
    assert requestid.new_id()[:24] == parents[:24]  # the parent goes on as it was
