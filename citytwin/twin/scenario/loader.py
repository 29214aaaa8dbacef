"""Reading scenario files: YAML, `extends:` with overrides, paths, and errors a person can act on.

`extends: base.yaml` loads the base first (relative to the extending file) and merges this file over
it: mappings merge key by key, anything else replaces. Paths in a file are relative to that file,
so a variant in another folder still finds the base's data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import UserInputError, problem
from .schema import Scenario

# Fields that hold paths, resolved against the directory of the file that sets them.
PATH_FIELDS = (
    ("city", "network", "path"),
    ("city", "network", "net"),
    ("city", "network", "nodes"),
    ("demand", "trips"),
)
# Discriminated unions: pydantic puts the chosen tag into error locations; people do not write it.
TAGGED = {"network": "source", "demand": "kind"}


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """The validated scenario in `path`, or UserInputError with one line per problem."""
    path = Path(path)
    raw = _load_with_extends(path, seen=())
    if overrides:
        raw = merge(raw, overrides)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        lines = [problem(str(path), *_describe(e)) for e in err.errors()]
        raise UserInputError(list(dict.fromkeys(lines))) from None


def _load_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise UserInputError(problem(str(path), "extends", f"extends itself in a cycle: {chain}"))
    data = _read_yaml(path)
    _resolve_paths(data, path.parent)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise UserInputError(problem(str(path), "extends", f"expected a file name; got {base_name!r}"))
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise UserInputError(problem(str(path), "extends", f"file not found: {base_path}"))
    return merge(_load_with_extends(base_path, (*seen, resolved)), data)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(problem(str(path), "", "file not found"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(err, "problem", None) or str(err)
        raise UserInputError(problem(str(path), "", f"{where}malformed YAML: {reason}")) from None
    except UnicodeDecodeError:
        raise UserInputError(problem(str(path), "", "expected a UTF-8 text file")) from None
    if data is None:
        raise UserInputError(problem(str(path), "", "the file is empty; expected a scenario mapping"))
    if not isinstance(data, dict):
        raise UserInputError(problem(str(path), "", f"expected a mapping of scenario fields; got {type(data).__name__}"))
    return data


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for keys in PATH_FIELDS:
        node = data
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(value if value.is_absolute() else (base / value))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge recursively, everything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, in the scenario's own words."""
    loc = _strip_tags(list(error["loc"]))
    kind, ctx = error["type"], error.get("ctx", {})
    got = error.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("discriminator", "").strip("'")
        expected = ", ".join(t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(","))
        loc.append(tag)
        if kind == "union_tag_not_found":
            return _dotted(loc), f"required; expected one of {expected}"
        return _dotted(loc), f"expected one of {expected}; got {ctx.get('tag')!r}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return _dotted(loc), f"expected one of {expected}; got {got!r}"
    if kind == "extra_forbidden":
        return _dotted(loc), "unknown key"
    if kind == "missing":
        return _dotted(loc), "required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    if "got" not in message and not isinstance(got, (dict, list)):
        message = f"{message}; got {got!r}"
    return _dotted(loc), message[0].lower() + message[1:]


def _strip_tags(loc: list[Any]) -> list[Any]:
    """The location as the scenario spells it: without the tag of a chosen union member, and without
    pydantic's names for union members (`literal[...]`, `list[...]`, `function-after[...]`)."""
    out: list[Any] = []
    skip = False
    for item in loc:
        if skip or (isinstance(item, str) and "[" in item):
            skip = False
            continue
        out.append(item)
        skip = item in TAGGED
    return out


def _dotted(loc: list[Any]) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text
