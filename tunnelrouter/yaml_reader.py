"""The configuration file as YAML: the document, the line of every key, and what is wrong
with the YAML itself, each a :class:`Problem` naming the key path and line.

PyYAML reads it (with YAML 1.2's booleans: ``off`` stays a string); one walk over its node
graph before anything is built finds keys given twice and alias bombs, and records where
each key and item is, so that ``config.py`` can put a line to every problem it finds.
Nothing in a file gives more than problems: nesting, numbers and alias expansion are
bounded.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import yaml

MAX_NODES = 200_000      # YAML nodes once aliases are expanded: an alias bomb stops here
MAX_DIGITS = 40          # a longer number is no configuration value (and int() would balk)


class Problem(NamedTuple):
    path: str      # the key path: ``tunnels.gre1.addresses[1]`` ("" for the file itself)
    message: str
    line: int | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans: only true and false. YAML 1.1 also reads yes,
    no, on and off as booleans, which turns ``mss-clamp: off`` into false."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_int(loader: _Loader, node: yaml.ScalarNode):
    if sum(character.isdigit() for character in node.value) > MAX_DIGITS:
        return node.value   # the model then says it is not a number it takes
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml(text: str) -> tuple[object, dict[tuple, int], list[Problem]]:
    """The document, the line of every key and item (by key path), and what is wrong
    with the YAML itself. When it cannot be read at all, the document is None."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as error:
        # A character YAML does not allow (a NUL, an escape sequence): where it is.
        return None, {}, [Problem("", f"not valid YAML: {error.reason} "
                                      f"{chr(error.character)!r} at offset {error.position}",
                                  text.count("\n", 0, error.position) + 1)]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines, problems = _inspect(node, loader.construct_object)
        if any(problem.message.startswith(("aliases", "an alias")) for problem in problems):
            return None, lines, problems
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        return None, {}, [Problem("", f"not valid YAML: {error.problem or error}",
                                  mark.line + 1 if mark else None)]
    except yaml.YAMLError as error:
        return None, {}, [Problem("", f"not valid YAML: {error}")]
    except RecursionError:
        return None, {}, [Problem("", "nested too deeply to be a configuration")]
    except (ValueError, TypeError) as error:
        return None, {}, [Problem("", f"cannot read it: {error}")]
    finally:
        loader.dispose()
    return data, lines, problems


def _inspect(root: yaml.Node, construct) -> tuple[dict[tuple, int], list[Problem]]:
    """One walk over the node graph: lines by key path, keys given twice, and the size
    the document would have with its aliases expanded (an alias bomb is refused here,
    before anything expands it). Key paths hold keys as the document will (``1``, not
    ``'1'``): ``construct`` makes a scalar key's value."""
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}
    problems: list[Problem] = []
    sizes: dict[int, int] = {}
    walking: set[int] = set()
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    while stack:
        node, path, done = stack.pop()
        if done:
            walking.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes.get(id(child), 0) for child in _children(node))
            if sizes[id(node)] > MAX_NODES:
                problems.append(Problem(path_text(path), f"aliases expand this to more than "
                                        f"{MAX_NODES} values", node.start_mark.line + 1))
                return lines, problems
            continue
        if id(node) in sizes:
            continue
        if id(node) in walking:
            problems.append(Problem(path_text(path), "an alias refers to a value that holds it",
                                    node.start_mark.line + 1))
            return lines, problems
        walking.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                key = id(key_node)
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    key = construct(key_node)
                    if key in seen:
                        problems.append(Problem(path_text(path + (key,)),
                                                f"given twice (first on line {seen[key]})", line))
                    seen.setdefault(key, line)
                    lines.setdefault(path + (key,), line)
                stack.append((value_node, path + (key,), False))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault(path + (index,), item.start_mark.line + 1)
                stack.append((item, path + (index,), False))
    return lines, problems


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def path_text(path: tuple) -> str:
    """``('tunnels', 'gre1', 'addresses', 1)`` -> ``tunnels.gre1.addresses[1]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
