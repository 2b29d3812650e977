"""YAML text -> a validated, frozen pydantic model, or errors that name file, line and field.

Kept apart from the models: this module knows YAML nodes and pydantic's error shapes, the
models know what a valid config is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)

# Bounds checked before and while parsing, so no file can make the parse (or the walks over
# its result) take memory or time out of proportion to a real config. A real config is a few
# KiB; 1 MiB is hundreds of routes.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting of mappings and lists (a real config needs < 10)
# Nodes of the document with every alias expanded: what the duplicate-key check and the
# validation will walk. An alias bomb (a few lines, 9 levels of 9 aliases) expands to ~10^9.
MAX_NODES = 200_000


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


Problem = tuple[tuple[str | int, ...], str]  # (location below the validated field, message)


class Located(ValueError):
    """Cross-field problems that belong to fields *below* the validated one.

    Pydantic puts a validator's error on the field it validates; `load()` appends each
    `where` to that location so the message points at e.g. `weights.canary`, not `weights`.
    """

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, w))}: {m}" if w else m
                                   for w, m in problems))
        self.problems = problems


# Pydantic's wording is written for programmers; these read better in an operator's terminal.
_MESSAGES = {
    "missing": "required",
    "too_short": "must not be empty",
    "extra_forbidden": "unknown key",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list",
}


def _message(error: ErrorDetails) -> str:
    if error["type"] in _MESSAGES:
        return _MESSAGES[error["type"]]
    ctx = error.get("ctx", {})
    if error["type"] in ("greater_than", "greater_than_equal"):
        return f"must be > {ctx['gt']}" if "gt" in ctx else f"must be >= {ctx['ge']}"
    if error["type"] in ("less_than", "less_than_equal"):
        return f"must be < {ctx['lt']}" if "lt" in ctx else f"must be <= {ctx['le']}"
    return str(error["msg"]).removeprefix("Value error, ")


def _locate(root: yaml.Node, loc: tuple[str | int, ...]) -> tuple[int, str]:
    """Follow `loc` through the YAML node tree: (1-based line, `routes[0].weights` path)."""
    node: yaml.Node | None = root
    line = root.start_mark.line
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's "the key itself failed": the key node is already found
            continue
        in_list = isinstance(node, yaml.SequenceNode) or (node is None and isinstance(part, int))
        path += f"[{part}]" if in_list else f".{part}"
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        elif isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            node = found[1] if found else None
            line = found[0].start_mark.line if found else line  # a missing key: its parent
        else:
            node = None
    return line + 1, path.removeprefix(".")


def _duplicate_keys(node: yaml.Node, seen_nodes: set[int] | None = None
                    ) -> Iterator[tuple[int, str]]:
    # PyYAML keeps the last of two equal keys without a word; that hides a real typo.
    # A node reached again through an alias is checked once.
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                yield key.start_mark.line + 1, f"duplicate key {key.value!r}"
            seen.add(str(key.value))
            yield from _duplicate_keys(value, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item, seen_nodes)


_BOOL_TAG = "tag:yaml.org,2002:bool"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with MAX_DEPTH and MAX_NODES enforced while composing: the
    error points at the line where the document went too deep or expanded too far.

    Booleans are YAML 1.2's, `true` and `false` only: YAML 1.1 also reads `on`, `off`, `yes`
    and `no` as booleans, which turned the webhook key `on:` into `True` (the GitHub Actions
    trap). A boolean field still takes `yes` or `on` (pydantic reads those strings).
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._total = 0  # expanded nodes so far
        self._weight: dict[int, int] = {}  # id(node) -> its expanded size, for aliases

    def _grow(self, n: int, event: yaml.Event) -> None:
        self._total += n
        if self._total > MAX_NODES:
            raise _too_much(event, f"the document expands to more than {MAX_NODES} nodes "
                            "(aliases included)")

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._grow(self._weight.get(id(target), 1), event)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _too_much(event, f"nested deeper than {MAX_DEPTH} levels")
        before = self._total
        self._grow(1, event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._weight[id(node)] = self._total - before
        return node


_BoundedLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _too_much(event: yaml.Event, problem: str) -> yaml.MarkedYAMLError:
    mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
    return yaml.composer.ComposerError(None, None, problem, mark)


def _compose(name: str, text: str) -> tuple[yaml.Node, object]:
    try:
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        problem = exc.problem or str(exc)
        if exc.context and problem.startswith("but "):  # "but found another document" needs it
            problem = f"{exc.context}, {problem}"
        raise ConfigError([f"{name}:{line}: yaml error: {problem}"]) from None
    except yaml.YAMLError as exc:  # e.g. a control character; no line to point at
        raise ConfigError([f"{name}:1: yaml error: {str(exc).splitlines()[0]}"]) from None
    if node is None:  # nothing, or only comments
        raise ConfigError([f"{name}:1: config file is empty"])
    return node, data


Recheck = Callable[[dict[object, object]], list[Problem]]


def load_model(path: str | Path, model: type[M], recheck: Recheck | None = None) -> M:
    """Read, parse and validate one file; every problem is one `file:line: field: ...` line.

    All of them at once: duplicate keys do not stop the validation, and when it fails,
    `recheck` (rules across fields, `crossfield.recheck`) judges the raw data too, because
    pydantic runs a model's validators only when all of its fields validated.
    """
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file's size
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError([f"{name}:1: config file larger than {MAX_CONFIG_BYTES} bytes: "
                               "refused"])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{name}: cannot read config: {reason}"]) from None
    root, data = _compose(name, text)
    found: list[tuple[int, str]] = list(_duplicate_keys(root))  # (line, message)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        found.append((root.start_mark.line + 1, f"the top level must be a mapping, not {kind}"))
        raise ConfigError([f"{name}:{line}: {msg}" for line, msg in found])
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, Located):
                found += [_at(root, (*error["loc"], *w), m) for w, m in cause.problems]
            elif not (error["type"] == "too_short" and error["input"]):
                # A list that is too short only because its items failed is no news.
                found.append(_at(root, error["loc"], _message(error)))
        found += [_at(root, w, m) for w, m in (recheck(data) if recheck else [])]
    else:
        if not found:
            return validated
    found = list(dict.fromkeys(found))  # a rule both pydantic and `recheck` applied
    found.sort(key=lambda e: e[0])  # stable: same line keeps pydantic's field order
    raise ConfigError([f"{name}:{line}: {msg}" for line, msg in found])


def _at(root: yaml.Node, loc: tuple[str | int, ...], message: str) -> tuple[int, str]:
    line, field = _locate(root, loc)
    return line, f"{field}: {message}"
