"""The config layer: every file a user writes (suites, arm files, world configs, group-scene layouts) is read here.

Each file kind is a pydantic v2 model (subclass `ConfigModel`: unknown keys refused, strict types, no NaN or
infinity) that lives beside the subsystem owning it. This module holds what they share:

- `read_config_text`: the file as UTF-8 text, or one error naming it as missing, a folder, binary or not UTF-8;
- `parse_yaml`: YAML with duplicate keys refused and syntax errors reported with line and column on one line;
- `validate`: a model (or any type pydantic takes) applied to the parsed data, its first error turned into ONE
  line naming the file kind, the file, the key path and what was expected, e.g.
  ``suite s.yaml: templates[2].text: expected a string, got list``;
- `load_config_file`: the three in a row.

Validators raise `ConfigValueError(message, *path)` to name a key below the value they check (a cross-field
check on a model names `target.gender`, not the model). `Expected("a probability")` in a type's `Annotated`
metadata words the type errors of that value.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError

from fairdiff.errors import FairdiffError

T = TypeVar("T")
MAX_CONFIG_BYTES = 16 * 2**20
MAX_CONFIG_VALUES = 1_000_000  # values in a parsed file, aliases expanded (a few aliases can nest to billions)
# names that become folder and file names in a run dir: no "/", no ".." and no leading dot
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ConfigModel(BaseModel):
    """Base of every config file model: unknown keys refused, types strict (an int is a number, "3" is not)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class ConfigValueError(ValueError):
    """A semantic check failed; `path` names the key below the validated value it is about."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.path = path


class Expected:
    """`Annotated` metadata: how to word a type or range error of this value ("a probability" -> "expected a
    probability, got 'high'"); `phrase=True` uses the text as is ("shares must be numbers >= 0, got nan")."""

    def __init__(self, text: str, *, phrase: bool = False) -> None:
        self.text = text if phrase else f"expected {text}"

    def __repr__(self) -> str:
        return f"Expected({self.text!r})"


def _safe_name(value: str) -> str:
    if not SAFE_NAME.match(value):
        raise ConfigValueError(f"names folders of the run dir: letters, digits and _ . + - only, got {value!r}")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ConfigValueError(f"expected a non-empty string, got {value!r}")
    return value


NonEmptyStr = Annotated[str, Expected("a non-empty string"), AfterValidator(_non_blank)]
SafeName = Annotated[str, Expected("a name (letters, digits and _ . + -)"), AfterValidator(_safe_name)]


def none_as(empty: Any):
    """A `BeforeValidator` function: YAML `key:` with nothing after it (null) means `empty`."""

    def convert(value: Any) -> Any:
        return type(empty)(empty) if value is None else value

    return convert


# ---------------------------------------------------------------------------------------------------- reading


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (as `repr` writes them)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fail(kind: str, source: str, message: str) -> FairdiffError:
    return FairdiffError(one_line(f"{kind} {source}: {message}"))


def read_config_text(path: str | Path, kind: str, source: str | None = None) -> str:
    """The text of a config file; a `FairdiffError` for a missing, unreadable, huge, binary or non-UTF-8 file."""
    path = Path(path)
    source = str(path) if source is None else source
    try:
        if path.is_dir():
            raise _fail(kind, source, "is a directory, not a file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _fail(kind, source, f"{path.stat().st_size} bytes, too large for a config file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _fail(kind, source, "no such file") from None
    except OSError as exc:
        raise _fail(kind, source, f"unreadable ({exc.strerror or exc})") from None
    return decode_config_bytes(data, kind, source)


def decode_config_bytes(data: bytes, kind: str, source: str) -> str:
    """UTF-8 text (a BOM allowed) of a config file's bytes; binary and other encodings are refused by name."""
    if b"\x00" in data:
        raise _fail(kind, source, "a binary file, not a YAML text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(
            kind, source, f"not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last without a word)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping below reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: Exception, text: str) -> str:
    """One line: where (line, column, 1-based) and what, for any error the YAML parser raises."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(str(p) for p in (exc.problem, exc.context) if p) or type(exc).__name__
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{what}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"line {line}, column {column}: character #x{char:04x} is not allowed in YAML"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).replace("\n", " ")


def parse_yaml(text: str, kind: str, source: str) -> Any:
    """Parse YAML text; a syntax error (or a duplicate key, a bad date, a huge integer) is one `FairdiffError`
    line with its line and column."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _fail(kind, source, f"not valid YAML: {_yaml_error(exc, text)}") from None
    problem = _shape_problem(data)
    if problem:
        raise _fail(kind, source, problem)
    return data


def _shape_problem(data: Any) -> str | None:
    """What makes parsed YAML unusable as a config though it parsed: an alias that contains itself, or aliases
    that expand to more than MAX_CONFIG_VALUES values."""
    count, on_path, path, stack = 0, set(), [], [iter([data])]
    while stack:
        node = next(stack[-1], _MISSING)
        if node is _MISSING:
            stack.pop()
            if path:
                on_path.discard(path.pop())
            continue
        count += 1
        if count > MAX_CONFIG_VALUES:
            return f"more than {MAX_CONFIG_VALUES} values once aliases are expanded"
        if isinstance(node, dict | list):
            if id(node) in on_path:
                return "an alias (*name) refers to a value that contains it"
            on_path.add(id(node))
            path.append(id(node))
            stack.append(iter(node.values() if isinstance(node, dict) else node))
    return None


# ------------------------------------------------------------------------------------------------- validation


def validate(schema: type[T] | Any, data: Any, kind: str, source: str) -> T:
    """`data` validated as `schema` (a `ConfigModel` or any type, e.g. `list[ArmSpec]`); the first error is one
    `FairdiffError` line: ``{kind} {source}: {key path}: {what was expected, what was there}``."""
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data)
        return _adapter(schema).validate_python(data)
    except ValidationError as exc:
        path, message = describe_error(schema, data, exc.errors(include_url=False)[0])
        raise _fail(kind, source, f"{path}: {message}") from None


def load_config_file(path: str | Path, schema: type[T] | Any, kind: str, source: str | None = None) -> tuple[T, Any]:
    """Read, parse and validate one config file: (the validated value, the parsed YAML data)."""
    source = str(path) if source is None else source
    data = parse_yaml(read_config_text(path, kind, source), kind, source)
    return validate(schema, data, kind, source), data


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(schema: Any) -> TypeAdapter:
    try:
        return _ADAPTERS[schema]
    except KeyError:
        return _ADAPTERS.setdefault(schema, TypeAdapter(schema))
    except TypeError:  # an unhashable type expression
        return TypeAdapter(schema)


def describe_value(value: Any) -> str:
    """A short, one-line rendering of a YAML value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "list" if value else "an empty list"
    if isinstance(value, dict):
        return "mapping" if value else "an empty mapping"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        text = repr(value) if isinstance(value, str | int | float) else f"{type(value).__name__} {value}"
    except ValueError:  # an integer past Python's digit limit
        return "a huge integer"
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "union_tag_not_found": "a mapping",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def describe_error(schema: Any, data: Any, error: dict) -> tuple[str, str]:
    """(key path, message) for one pydantic error dict, e.g. ("templates[2].text", "expected a string, got list")."""
    loc = list(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigValueError):
        loc += list(cause.path)
    walk = _Walk(schema, data, loc)
    kind, value = error["type"], error.get("input")
    if isinstance(cause, ConfigValueError):
        return walk.path, str(cause)
    if walk.is_key:
        what = "is not a string" if kind == "string_type" else error.get("msg", "invalid")
        return walk.path, f"key {describe_value(value)} {what}"
    if kind == "missing":
        return walk.path, "missing key" + (f", {walk.expected.text}" if walk.expected is not None else "")
    if kind == "extra_forbidden":
        allowed = walk.allowed_keys()
        return walk.path, "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "literal_error" and walk.literal:
        words = ", ".join(str(v) for v in walk.literal)
        return walk.path, f"must be one of {words}, got {describe_value(value)}"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return walk.path, f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    got = "an empty document" if value is None and not loc else describe_value(value)
    if kind in _TYPE_WORDS or kind in _BOUNDS or kind in ("too_short", "string_too_short", "too_long"):
        if walk.expected is not None:
            return walk.path, f"{walk.expected.text}, got {got}"
        if kind in _TYPE_WORDS:
            return walk.path, f"expected {_TYPE_WORDS[kind]}, got {got}"
        ctx = error.get("ctx") or {}
        if kind in _BOUNDS:
            bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "?")
            return walk.path, f"expected a number {_BOUNDS[kind]} {bound}, got {got}"
        if kind == "string_too_short":
            return walk.path, f"expected a non-empty string, got {got}"
        if kind == "too_short":
            return walk.path, f"expected at least {ctx.get('min_length', 1)} item(s), got {ctx.get('actual_length', 0)}"
        return walk.path, f"expected at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    message = error.get("msg", "invalid").replace("\n", " ")
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return walk.path, message


_MISSING = object()


class _Walk:
    """Follows an error's location through the input data and the schema at once: the key path as a user writes
    it (union tags dropped, `[key]` spelt out), and what the schema says at that point (its `Expected` wording,
    Literal choices, the keys a model allows)."""

    def __init__(self, schema: Any, data: Any, loc: Sequence[Any]) -> None:
        self.parts: list[str | int] = []
        self.expected: Expected | None = None
        self.literal: tuple = ()
        self.last: Any = loc[-1] if loc else None
        self._parent_type: Any = None
        tp, node, is_key = schema, data, False
        for i, element in enumerate(loc):
            final = i == len(loc) - 1
            tp, meta = _unwrap(tp)
            if _is_union(tp):
                member = _union_member(tp, element) if not final else None
                if member is not None or (isinstance(node, dict) and element not in node and not final):
                    tp = member  # a union tag in the location: not a key the user wrote
                    continue
                tp = None
            if element == "[key]":
                is_key = True
                continue
            self._parent_type = tp
            tp = _child_type(tp, element)
            node = _child(node, element)
            self.parts.append(element)
        tp, meta = _unwrap(tp)
        self.expected = None if is_key else next((m for m in meta if isinstance(m, Expected)), None)
        if typing.get_origin(tp) is typing.Literal:
            self.literal = typing.get_args(tp)
        self.is_key = is_key

    @staticmethod
    def _render(parts: Sequence[str | int]) -> str:
        out = ""
        for p in parts:
            if isinstance(p, int) and not isinstance(p, bool):
                out += f"[{p}]"
            else:
                text = str(p)
                out += ("." if out else "") + (text if text and text.isprintable() else repr(text))
        return out or "<top>"

    @property
    def path(self) -> str:
        """The key path; for an error in a mapping's key, the mapping's."""
        return self._render(self.parts[:-1] if self.is_key else self.parts)

    def allowed_keys(self) -> list[str]:
        tp, _ = _unwrap(self._parent_type)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return sorted(f.alias or name for name, f in tp.model_fields.items())
        return []


def _unwrap(tp: Any) -> tuple[Any, list]:
    """Strip Annotated (collecting its metadata) and Optional."""
    meta: list = []
    while True:
        if typing.get_origin(tp) is Annotated:
            meta = list(tp.__metadata__) + meta
            tp = typing.get_args(tp)[0]
        elif _is_union(tp) and type(None) in typing.get_args(tp):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return typing.Union[tuple(rest)], meta  # noqa: UP007
            tp = rest[0]
        else:
            return tp, meta


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _union_member(tp: Any, tag: Any) -> Any:
    """The member of a discriminated union that `tag` selects: by its `Tag`, or by a Literal field holding it."""
    for member in typing.get_args(tp):
        meta = getattr(member, "__metadata__", ())
        if any(getattr(m, "tag", _MISSING) == tag for m in meta):
            return member
        model, _ = _unwrap(member)
        if isinstance(model, type) and issubclass(model, BaseModel):
            for f in model.model_fields.values():
                if typing.get_origin(f.annotation) is typing.Literal and tag in typing.get_args(f.annotation):
                    return member
    return None


def _child_type(tp: Any, element: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, f in tp.model_fields.items():
            if element in (name, f.alias):
                return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, Sequence) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _child(node: Any, element: Any) -> Any:
    if isinstance(node, dict):
        return node.get(element, _MISSING)
    if isinstance(node, list) and isinstance(element, int) and -len(node) <= element < len(node):
        return node[element]
    return _MISSING
