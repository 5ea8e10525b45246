"""Read YAML with ``yaml.safe_load`` semantics while keeping a line:column for every node.

The text is composed into PyYAML's node tree with the SafeLoader; Python data is
built from it here (scalars through the SafeConstructor, so tags beyond the safe
set are refused), which lets us report duplicate keys, non-string keys and
recursive aliases as issues instead of silently accepting them.

Aliases share one built object, as in ``safe_load``, but everything downstream
(the schema validator, messages, dumps) walks the data as a tree, so a few lines
of nested aliases ("billion laughs") would cost work exponential in their count.
The builder therefore counts the nodes every alias and merge key adds to that
tree and refuses a recipe above :data:`ALIAS_NODE_LIMIT` (R014): the data it
returns is at most the file's own nodes plus that many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aqrecipe.recipe import issues as codes
from aqrecipe.recipe.excerpt import short_repr
from aqrecipe.recipe.issues import RecipeIssue
from aqrecipe.recipe.paths import Key, format_path

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STR_TAG = "tag:yaml.org,2002:str"

#: Nodes that aliases and merge keys may add to a recipe's tree, beyond the ones written out.
#: Real recipes reuse a few small blocks (tens to hundreds of nodes); an alias bomb adds billions.
ALIAS_NODE_LIMIT = 10_000


def _mark(mark: Any) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


@dataclass
class PositionIndex:
    """Finds the YAML position of a JSON path in a composed document (lazily, no copies)."""

    root: Node | None
    # per mapping node: key text -> (key node, value node); built on first use so that
    # thousands of issues in one wide mapping cost one pass over it, not one each
    _keyed: dict[int, dict[str, tuple[Node, Node]]] = field(default_factory=dict, repr=False)

    def _pairs(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        keyed = self._keyed.get(id(node))
        if keyed is None:
            # last occurrence wins, as in the constructed dict (and after merges)
            keyed = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
            self._keyed[id(node)] = keyed
        return keyed

    def _walk(self, keys: Sequence[Key]) -> tuple[Node | None, Node | None, int]:
        """(value node, key node of the last step, number of keys resolved)."""
        node, key_node = self.root, None
        for depth, key in enumerate(keys):
            nxt = None
            if isinstance(node, MappingNode):
                found = self._pairs(node).get(str(key))
                if found is not None:
                    key_node, nxt = found
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
    except _AliasBomb as bomb:  # nothing built is kept: the issue alone says what to fix
        return ParsedYaml(None, PositionIndex(None), [bomb.issue])
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


class _AliasBomb(Exception):
    """Aliases expanded past :data:`ALIAS_NODE_LIMIT`; carries the R014 issue."""

    def __init__(self, issue: RecipeIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


class _Builder:
    """Node tree -> dict/list/scalars, collecting duplicate keys and refused YAML features."""

    def __init__(self, loader: yaml.SafeLoader, alias_limit: int | None = None) -> None:
        self.loader = loader
        self.issues: list[RecipeIssue] = []
        self.refused: list[str] = []
        self.active: set[int] = set()  # ids of collections being built: detects recursive aliases
        self.done: dict[int, Any] = {}  # aliases share one object, as in safe_load
        self.size: dict[int, int] = {}  # id of a built collection -> nodes of its tree (aliases expanded)
        self.flattening: set[int] = set()  # mappings whose merge keys are being resolved
        self.alias_limit = ALIAS_NODE_LIMIT if alias_limit is None else alias_limit
        self.alias_nodes = 0  # nodes aliases and merge keys added to the tree so far

    def _issue(self, code: str, node: Node, path: list[Key], message: str, value: Any = None,
               allowed: Any = None) -> None:
        line, column = _mark(node.start_mark)
        self.issues.append(RecipeIssue(code, line, column, format_path(path), message, value, allowed))

    def _charge(self, nodes: int, anchor: Node, path: list[Key]) -> None:
        """Count ``nodes`` more in the tree (an alias of ``anchor`` used at ``path``); refuse past the limit."""
        self.alias_nodes += nodes
        if self.alias_nodes <= self.alias_limit:
            return
        line, column = _mark(anchor.start_mark)
        raise _AliasBomb(RecipeIssue(
            codes.ALIAS_EXPANSION, line, column, format_path(path),
            f"YAML aliases and merge keys expand this recipe by more than {self.alias_limit} nodes "
            f"(at {format_path(path)}, the anchor on line {line} adds {nodes} more); nested aliases "
            "grow exponentially (a 'billion laughs' document)",
            allowed="write the values out, or alias only small blocks",
        ))

    def build(self, node: Node, path: list[Key]) -> Any:
        if id(node) in self.done:  # an alias: the same object again, one more copy of its tree
            self._charge(self.size[id(node)], node, path)
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

    def _tree_size(self, nodes: Sequence[Node]) -> int:
        """Nodes of the trees under ``nodes``, once they are built (a scalar counts 1)."""
        return sum(self.size.get(id(n), 1) for n in nodes)

    def _scalar(self, node: ScalarNode, path: list[Key]) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.refused.append(format_path(path))
            self._issue(codes.YAML_UNSUPPORTED, node, path,
                        f"YAML value {short_repr(node.value)} cannot be read: {problem}",
                        value=node.value, allowed="plain strings, numbers, booleans and null")
            return node.value

    def _check_tag(self, node: Node, path: list[Key], expected: str) -> None:
        if node.tag != expected:
            self.refused.append(format_path(path))
            tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
            self._issue(codes.YAML_UNSUPPORTED, node, path, f"YAML tag {short_repr(tag)} is not allowed in a recipe",
                        value=tag, allowed="plain mappings and lists (no tags)")

    def _sequence(self, node: SequenceNode, path: list[Key]) -> list[Any]:
        self._check_tag(node, path, _SEQ_TAG)
        result = [self.build(item, path + [i]) for i, item in enumerate(node.value)]
        self.size[id(node)] = 1 + self._tree_size(node.value)
        return result

    def _mapping(self, node: MappingNode, path: list[Key]) -> dict[str, Any]:
        self._check_tag(node, path, _MAP_TAG)
        self._report_duplicates(node, path)
        self._flatten(node, path)  # YAML merge keys ("<<: *base")
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue(codes.YAML_UNSUPPORTED, key_node, path, "mapping key is not a plain string",
                            allowed="plain string keys")
                continue
            # keys are compared by their text: "1:" or "yes:" become the keys "1" / "yes"
            key = key_node.value
            result[key] = self.build(value_node, path + [key])
        self.size[id(node)] = 1 + len(node.value) + self._tree_size([v for _, v in node.value])
        return result

    def _flatten(self, node: MappingNode, path: list[Key]) -> None:
        """Resolve merge keys in place with ``safe_load``'s precedence, one pair per key.

        Keys written in the mapping win over merged ones, and among ``<<: [*a, *b]``
        the first mapping that has a key wins, as YAML's merge rule says. Keys are
        compared by their text (PyYAML's ``flatten_mapping`` compares key objects, so
        equal keys from different mappings pile up, and a merged mapping can bring a
        key's merged value instead of its own); each key is taken once and each pair
        merged in is charged to the alias budget (its value when it is built).
        """
        if not any(k.tag == _MERGE_TAG for k, _ in node.value) or id(node) in self.flattening:
            return
        self.flattening.add(id(node))
        try:
            written = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
            taken = {k.value for k, _ in written if isinstance(k, ScalarNode)}
            merged: list[tuple[Node, Node]] = []
            for key_node, value_node in node.value:
                if key_node.tag != _MERGE_TAG:
                    continue
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        self._issue(codes.YAML_UNSUPPORTED, source, path,
                                    "bad YAML merge key: expected a mapping or a list of mappings to merge",
                                    allowed="'<<: *anchor' where the anchor is a mapping")
                        continue
                    if id(source) in self.flattening:
                        self.refused.append(format_path(path))
                        self._issue(codes.YAML_UNSUPPORTED, source, path,
                                    "recursive YAML merge (a mapping that merges itself)",
                                    allowed="repeat the content instead of merging an enclosing mapping")
                        continue
                    self._flatten(source, path)
                    for k, v in source.value:
                        key = k.value if isinstance(k, ScalarNode) else None
                        if key is not None and key in taken:
                            continue
                        if key is not None:
                            taken.add(key)
                        self._charge(1, source, path + ([key] if key is not None else []))
                        merged.append((k, v))
            for k, _ in written:
                if k.tag == _VALUE_TAG:  # the "=" key, read as a string as safe_load does
                    k.tag = _STR_TAG
            node.value = merged + written
        finally:
            self.flattening.discard(id(node))

    def _report_duplicates(self, node: MappingNode, path: list[Key]) -> None:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                self._issue(codes.DUPLICATE_KEY, key_node, path + [key_node.value],
                            f"duplicate key {short_repr(key_node.value)} (first defined on line "
                            f"{first_line[key_node.value]})",
                            value=key_node.value, allowed="each key once per mapping; the last one would win")
            else:
                first_line[key_node.value] = line
