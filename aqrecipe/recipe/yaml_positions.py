"""Read YAML with ``yaml.safe_load`` semantics while keeping a line:column for every node.

The text is composed into PyYAML's node tree with the SafeLoader; Python data is
built from it here (scalars through the SafeConstructor, so tags beyond the safe
set are refused), which lets us report duplicate keys, non-string keys and
recursive aliases as issues instead of silently accepting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aqrecipe.recipe import issues as codes
from aqrecipe.recipe.issues import RecipeIssue
from aqrecipe.recipe.paths import Key, format_path

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _mark(mark: Any) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


@dataclass
class PositionIndex:
    """Finds the YAML position of a JSON path in a composed document (lazily, no copies)."""

    root: Node | None

    def _walk(self, keys: Sequence[Key]) -> tuple[Node | None, Node | None, int]:
        """(value node, key node of the last step, number of keys resolved)."""
        node, key_node = self.root, None
        for depth, key in enumerate(keys):
            nxt = None
            if isinstance(node, MappingNode):
                # last occurrence wins, as in the constructed dict (and after merges)
                for k, v in reversed(node.value):
                    if isinstance(k, ScalarNode) and k.value == str(key):
                        nxt, key_node = v, k
                        break
            elif isinstance(node, SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                nxt, key_node = node.value[key], None
            if nxt is None:
                return node, key_node, depth
            node = nxt
        return node, key_node, len(keys)

    def value_position(self, keys: Sequence[Key], *, nearest: bool = False) -> tuple[int, int] | None:
        """Position of the value at ``keys``; with ``nearest`` fall back to the deepest ancestor."""
        node, _, found = self._walk(keys)
        if node is None or (found < len(keys) and not nearest):
            return None
        return _mark(node.start_mark)

    def key_position(self, keys: Sequence[Key], *, nearest: bool = False) -> tuple[int, int] | None:
        """Position of the mapping key naming ``keys[-1]`` (the value's position for list items)."""
        node, key_node, found = self._walk(keys)
        if found == len(keys) and key_node is not None:
            return _mark(key_node.start_mark)
        return self.value_position(keys, nearest=nearest)


@dataclass
class ParsedYaml:
    """Result of :func:`parse_yaml`: data (None when unusable), positions and issues found."""

    data: Any
    positions: PositionIndex
    issues: list[RecipeIssue] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # JSON paths of values whose YAML was refused


def decode_utf8(raw: bytes) -> tuple[str | None, RecipeIssue | None]:
    """Decode recipe bytes as UTF-8 (a BOM is allowed); report the first bad byte's position."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1
        line_start = raw.rfind(b"\n", 0, start) + 1
        column = len(raw[line_start:start].decode("utf-8", errors="replace")) + 1
        bad = raw[start:exc.end]
        return None, RecipeIssue(
            codes.NOT_UTF8, line, column, "$",
            f"file is not valid UTF-8: byte {bad[:1].hex(' ')!s} ({exc.reason})",
            value=bad, allowed="save the recipe as UTF-8 text",
        )


def parse_yaml(text: str) -> ParsedYaml:
    """Compose ``text`` and build plain Python data; every problem becomes a RecipeIssue."""
    root, loader, problem = _compose(text)
    if problem is not None:
        return ParsedYaml(None, PositionIndex(None), [problem])
    builder = _Builder(loader)
    try:
        data = builder.build(root, []) if root is not None else None
    except RecursionError:
        builder.issues.append(RecipeIssue(codes.YAML_SYNTAX, None, None, "$", "YAML nesting is too deep"))
        data = None
    finally:
        loader.dispose()
    return ParsedYaml(data, PositionIndex(root), builder.issues, builder.refused)


def _compose(text: str) -> tuple[Node | None, Any, RecipeIssue | None]:
    """(root node, loader, None) or (None, None, issue).

    libyaml composes large recipes ~10x faster with identical marks; on failure the
    pure-Python loader runs again because its messages are more precise (tabs, characters).
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        loader = fast(text)
        try:
            return loader.get_single_node(), loader, None
        except (yaml.YAMLError, RecursionError):
            loader.dispose()
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters up front
        return loader.get_single_node(), loader, None
    except yaml.MarkedYAMLError as exc:
        return None, None, _syntax_issue(exc, text)
    except yaml.YAMLError as exc:  # ReaderError: a control character in the text
        return None, None, _reader_issue(exc, text)
    except RecursionError:
        return None, None, RecipeIssue(codes.YAML_SYNTAX, None, None, "$", "YAML nesting is too deep")


def _syntax_issue(exc: yaml.MarkedYAMLError, text: str) -> RecipeIssue:
    mark = exc.problem_mark or exc.context_mark
    line, column = _mark(mark) if mark is not None else (None, None)
    problem = exc.problem or str(exc)
    offending = text.splitlines()[line - 1] if line is not None and line <= len(text.splitlines()) else ""
    indent = offending[: len(offending) - len(offending.lstrip())]
    if "\t" in problem or "tab" in problem or "\t" in indent:
        return RecipeIssue(
            codes.TAB_INDENT, line, column, "$",
            f"tab character used for indentation ({problem.strip()})",
            value=offending, allowed="indent with spaces, not tabs",
        )
    context = f" ({exc.context})" if exc.context else ""
    return RecipeIssue(
        codes.YAML_SYNTAX, line, column, "$", f"YAML syntax error: {problem}{context}",
        value=offending.strip() or None,
    )


def _reader_issue(exc: yaml.YAMLError, text: str) -> RecipeIssue:
    pos = getattr(exc, "position", None)
    line = column = None
    if isinstance(pos, int):
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = getattr(exc, "character", None)
    return RecipeIssue(
        codes.YAML_SYNTAX, line, column, "$",
        f"YAML syntax error: character {char!r} is not allowed in YAML text",
        value=char,
    )


class _Builder:
    """Node tree -> dict/list/scalars, collecting duplicate keys and refused YAML features."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.issues: list[RecipeIssue] = []
        self.refused: list[str] = []
        self.active: set[int] = set()  # ids of collections being built: detects recursive aliases
        self.done: dict[int, Any] = {}  # aliases share one object, as in safe_load

    def _issue(self, code: str, node: Node, path: list[Key], message: str, value: Any = None,
               allowed: Any = None) -> None:
        line, column = _mark(node.start_mark)
        self.issues.append(RecipeIssue(code, line, column, format_path(path), message, value, allowed))

    def build(self, node: Node, path: list[Key]) -> Any:
        if id(node) in self.done:
            return self.done[id(node)]
        if id(node) in self.active:
            self.refused.append(format_path(path))
            self._issue(codes.YAML_UNSUPPORTED, node, path, "recursive YAML alias (a node that contains itself)",
                        allowed="repeat the content instead of aliasing an enclosing node")
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self.active.add(id(node))
        try:
            result = self._mapping(node, path) if isinstance(node, MappingNode) else self._sequence(node, path)
        finally:
            self.active.discard(id(node))
        self.done[id(node)] = result
        return result

    def _scalar(self, node: ScalarNode, path: list[Key]) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.refused.append(format_path(path))
            self._issue(codes.YAML_UNSUPPORTED, node, path, f"YAML value {node.value!r} cannot be read: {problem}",
                        value=node.value, allowed="plain strings, numbers, booleans and null")
            return node.value

    def _check_tag(self, node: Node, path: list[Key], expected: str) -> None:
        if node.tag != expected:
            self.refused.append(format_path(path))
            tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
            self._issue(codes.YAML_UNSUPPORTED, node, path, f"YAML tag {tag!r} is not allowed in a recipe",
                        value=tag, allowed="plain mappings and lists (no tags)")

    def _sequence(self, node: SequenceNode, path: list[Key]) -> list[Any]:
        self._check_tag(node, path, _SEQ_TAG)
        return [self.build(item, path + [i]) for i, item in enumerate(node.value)]

    def _mapping(self, node: MappingNode, path: list[Key]) -> dict[str, Any]:
        self._check_tag(node, path, _MAP_TAG)
        self._report_duplicates(node, path)
        try:
            self.loader.flatten_mapping(node)  # YAML merge keys ("<<: *base")
        except yaml.YAMLError as exc:
            self._issue(codes.YAML_UNSUPPORTED, node, path, f"bad YAML merge key: {getattr(exc, 'problem', exc)}")
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue(codes.YAML_UNSUPPORTED, key_node, path, "mapping key is not a plain string",
                            allowed="plain string keys")
                continue
            # keys are compared by their text: "1:" or "yes:" become the keys "1" / "yes"
            key = key_node.value
            result[key] = self.build(value_node, path + [key])
        return result

    def _report_duplicates(self, node: MappingNode, path: list[Key]) -> None:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                self._issue(codes.DUPLICATE_KEY, key_node, path + [key_node.value],
                            f"duplicate key {key_node.value!r} (first defined on line {first_line[key_node.value]})",
                            value=key_node.value, allowed="each key once per mapping; the last one would win")
            else:
                first_line[key_node.value] = line
