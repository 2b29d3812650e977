"""The YAML loader's bounds: file size, nesting depth and alias expansion, each refused with a
`file:line` error before it can cost time or memory; ordinary anchors and merge keys work."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.models import ConfigError, load

ROUTES = """\
defaults: &ep {endpoints: ["http://127.0.0.1:9001"]}
routes:
  - name: shop
    versions: {stable: *ep, canary: {<<: *ep}}
    weights: {stable: 1, canary: 1}
"""


def _load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        load(path)
    except ConfigError as exc:
        return exc.errors
    return []


def test_anchors_and_merge_keys_are_fine(tmp_path: Path) -> None:
    assert _load(tmp_path, ROUTES) == ["%s:1: defaults: unknown key" % (tmp_path / "c.yaml")]


@pytest.mark.parametrize(("extra", "line", "message"), [
    ("x: " + "[" * 65 + "]" * 65 + "\n", 6, "nested deeper than 64 levels"),
    ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [1]\n"
             for i in range(7)), 11, "expands to more than 200000 nodes"),
])
def test_deep_or_exploding_documents_are_refused_where_they_go_wrong(
        tmp_path: Path, extra: str, line: int, message: str) -> None:
    (error,) = _load(tmp_path, ROUTES + extra)
    assert error.startswith(f"{tmp_path / 'c.yaml'}:{line}: yaml error: ") and message in error


def test_a_file_over_1_mib_is_refused_unread(tmp_path: Path) -> None:
    (error,) = _load(tmp_path, ROUTES + "#" * (1 << 20))
    assert error.endswith("config file larger than 1048576 bytes: refused")
