"""config/example.yaml is the reference: it loads, its first line's command works as written,
and every field of the config models appears in it (set, or commented out with its value)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from splitproxy.config.models import Config, load

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"
# `# key: value` and `# - key: value`: a field shown commented out.
COMMENTED_KEY = re.compile(r"^\s*#\s*(?:-\s+)?([a-z][a-z0-9_]*):(?:\s|$)")


def _models(annotation: object) -> Iterator[type[BaseModel]]:
    """The models inside an annotation: X, X | None, tuple[X, ...], dict[str, X], Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, key) of every field a config may set; removed settings left out."""
    for name, field in model.model_fields.items():
        if field.exclude:  # a removed setting, refused at load with what to write instead
            continue
        yield prefix + name, name
        for sub in _models(field.annotation):
            yield from _fields(sub, f"{prefix}{name}.")


def _set_paths(model: type[BaseModel], data: object, prefix: str = "") -> Iterator[str]:
    """The dotted paths the example sets, through lists and name-keyed mappings."""
    if isinstance(data, list | tuple):
        for item in data:
            yield from _set_paths(model, item, prefix)
        return
    if not isinstance(data, dict):
        return
    if not set(data) <= set(model.model_fields):  # a mapping of names (versions) to models
        for value in data.values():
            yield from _set_paths(model, value, prefix)
        return
    for key, value in data.items():
        yield prefix + key
        for sub in _models(model.model_fields[key].annotation):
            yield from _set_paths(sub, value, f"{prefix}{key}.")


def test_the_model_walk_sees_nested_models() -> None:
    paths = {path for path, _ in _fields(Config)}
    assert {"routes.versions.endpoints", "routes.rollout.steps.pause.duration",
            "routes.analysis.compare_to_baseline.margin", "state.lease"} <= paths
    assert "routes.analysis.min_requests" not in paths  # removed: refused at load


def test_example_covers_every_field_of_the_models() -> None:
    text = EXAMPLE.read_text()
    set_here = set(_set_paths(Config, load(EXAMPLE).model_dump(exclude_unset=True)))
    commented = {m[1] for line in text.splitlines() if (m := COMMENTED_KEY.match(line))}
    missing = [path for path, key in _fields(Config)
               if path not in set_here and key not in commented]
    assert not missing, f"config/example.yaml lacks (set or commented out): {missing}"


def _explained(lines: list[str], i: int) -> bool:
    """Line i has a comment of its own, or a comment line right above it."""
    line = lines[i].strip()
    own = line.lstrip("#").strip()  # a commented-out key: its own comment is a second `#`
    return "#" in own or (i > 0 and lines[i - 1].strip().startswith("#"))


def test_example_explains_every_field() -> None:
    lines = EXAMPLE.read_text().splitlines()
    key_lines: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(?:#\s*)?(?:-\s+)?([a-z][a-z0-9_]*):(?:\s|$)", line)
        if m:
            key_lines.setdefault(m[1], []).append(i)
    bare = sorted({key for _, key in _fields(Config)
                   if not any(_explained(lines, i) for i in key_lines.get(key, []))})
    assert not bare, f"fields without a comment in config/example.yaml: {bare}"


def test_example_loads_with_both_kinds_of_route() -> None:
    config = load(EXAMPLE)
    assert [r.strategy for r in config.routes] == ["canary", "blue-green"]
    shop = config.routes[0]
    assert shop.analysis is not None and shop.rollout is not None
    assert shop.rollout.window is not None and shop.rollout.webhooks


def test_first_line_command_works_as_written() -> None:
    first = EXAMPLE.read_text().splitlines()[0]
    (command,) = re.findall(r"`(splitproxy [^`]+)`", first)
    assert command == "splitproxy check config/example.yaml"
    argv = shlex.split(command)
    result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "route shop" in result.stdout and "route checkout" in result.stdout
    assert not (ROOT / "config" / "example.state.json").exists()  # check writes no state
