"""Reading a config document: YAML that refuses repeated keys, and ``${ENV}`` references
typed by the model's annotations. Errors name the key and the line, never the value.

Place in the flow: ``config.load_config`` reads the file through ``read_yaml``, then
``parse_config`` expands it with ``expand_tree`` and validates it against the model.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from ganglion.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FORMS = "${VAR} or ${VAR:-default}"

Loc = tuple[str | int, ...]


def key_name(part: str | int) -> str:
    """A key as written, or quoted when blank or odd (a stray space, a control character)."""
    text = str(part)
    return text if re.fullmatch(r"[\w-]+", text) else repr(text)


def loc_text(loc: Loc) -> str:
    return ".".join(key_name(p) for p in loc) or "<top>"


def expand_env(value: str, env: dict[str, str], where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset ``${VAR}`` with no default fails,
    and so does any other ``${`` (``${VAR:default}``, ``${VAR-}``): left as it is, it would
    pass as a literal value (a guessable ``web.token``, say)."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"config error: {where}: environment variable {name} is not set")

    leftover = _VAR.sub("", value)  # the text as written: a variable's value is never checked
    if "${" in leftover:
        raise ConfigError(f"config error: {where}: not a valid environment reference; write "
                          f"{_FORMS} (a name of letters, digits and _)")
    return _VAR.sub(repl, value)


def _kinds(annotation: Any) -> list[Any]:
    """The types a field annotation admits, Annotated, unions and Literals unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [k for arg in get_args(annotation) for k in _kinds(arg)]
    if origin is Literal:
        return [type(v) for v in get_args(annotation)]
    return [annotation]


def _typed_env(text: str, annotation: Any) -> Any:
    """A value that was one whole ``${VAR}`` reference, typed as YAML types it when the key
    takes that type (``port: ${PORT:-8080}`` is a number, ``enabled: ${X:-true}`` a bool),
    else the text as it is (an api_key of digits stays text)."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    kinds = _kinds(annotation)
    takes = (
        (parsed is None and NoneType in kinds)
        or (isinstance(parsed, bool) and bool in kinds)
        or (type(parsed) is int and (int in kinds or float in kinds))
        or (type(parsed) is float and float in kinds)
    )
    return parsed if takes else text


def _child(annotation: Any, key: str | int) -> Any:
    """The annotation of ``key`` inside a value of type ``annotation`` (None: unknown)."""
    for kind in _kinds(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(key))
            return field.annotation if field is not None else None
        if get_origin(kind) is list and isinstance(key, int):
            return get_args(kind)[0]
        if get_origin(kind) is dict and isinstance(key, str):
            return get_args(kind)[1]
    return None


def expand_tree(node: Any, env: dict[str, str], loc: Loc, annotation: Any) -> Any:
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, val in node.items():
            if not isinstance(key, str):
                raise ConfigError(f"config error: {loc_text(loc)}: key {key!r} is not a string")
            out[key] = expand_tree(val, env, (*loc, key), _child(annotation, key))
        return out
    if isinstance(node, list):
        return [expand_tree(v, env, (*loc, i), _child(annotation, i))
                for i, v in enumerate(node)]
    if isinstance(node, str):
        expanded = expand_env(node, env, loc_text(loc))
        return _typed_env(expanded, annotation) if _VAR.fullmatch(node) else expanded
    return node

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping: YAML keeps the last silently, so
    a second ``web:`` section would quietly replace the first."""

    source = "config"

    def construct_document(self, node: yaml.Node) -> Any:
        self._refuse_repeats(node, (), set())
        return super().construct_document(node)

    def _refuse_repeats(self, node: yaml.Node, loc: Loc, seen: set[int]) -> None:
        if id(node) in seen:  # an alias: checked where it was anchored (and no endless loop)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_repeats(item, (*loc, i), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                key = "<<"
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = str(key_node.value)
                    line = key_node.start_mark.line + 1
                    if (key_node.tag, key) in first:
                        raise ConfigError(
                            f"config error: {self.source}: line {line}: "
                            f"{loc_text((*loc, key))} is given twice (first on line "
                            f"{first[key_node.tag, key]}); YAML would keep only the last, "
                            "silently: keep one")
                    first[key_node.tag, key] = line
                self._refuse_repeats(value_node, (*loc, key), seen)


def read_yaml(text: str, path: Path) -> Any:
    """The document in ``text``; errors name the file, the line and the column, and never
    quote the file (PyYAML's own message does, and the line may hold an api_key)."""
    try:
        loader = _UniqueKeyLoader(text)  # reads the whole text: refuses control characters
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ConfigError(f"config error: {path}: line {line}: not valid YAML: character "
                          f"#x{err.character:02x} is not allowed; remove it") from None
    loader.source = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = err.problem or err.context or "unreadable"
        raise ConfigError(f"config error: {path}: {where}not valid YAML: {what}") from None
    except yaml.YAMLError:
        raise ConfigError(f"config error: {path}: not valid YAML") from None
    except ValueError as err:  # a scalar YAML resolves but cannot build, e.g. 2024-13-45
        raise ConfigError(f"config error: {path} is not valid YAML: {err}; quote the value "
                          "to keep it as text") from None
    except RecursionError:
        raise ConfigError(f"config error: {path} is not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
