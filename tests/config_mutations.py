"""Shared by the config property tests: hypothesis strategies that turn a valid config file into a broken one.

`broken_files(data, raw)` draws either a structural mutation of the parsed data (keys deleted or added, values
replaced by wrong types, huge or negative numbers, NaN/inf, text for numbers, at any depth), dumped back to YAML,
or a byte-level corruption of the original file (truncated at any offset, binary or non-UTF-8 bytes inserted,
YAML punctuation spliced in). `check_outcome` accepts a loader's success or one `FairdiffError` line naming the
file, and nothing else.
"""

from __future__ import annotations

import copy
import datetime
import math

import yaml
from hypothesis import strategies as st

from fairdiff.errors import FairdiffError

WEIRD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    -(2**63),
    2**64,
    10**30,
    -(10**30),
    0.5,
    -0.5,
    1e-300,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    " ",
    "3",
    "0.5",
    "true",
    "x",
    "{subject}",
    "a {x}",
    "a/../b",
    "../../escaped",
    "caf\xe9",
    "\x00",
    "line\nbreak",
    "\u2028",
    "x" * 300,
    [],
    [None],
    ["x"],
    [1, 2],
    [[]],
    {},
    {"a": 1},
    {"kind": "base"},
    {"value": "x", "of": 3},
    b"\x00\xff",
    datetime.date(2020, 1, 1),
]

# YAML that safe_dump cannot write: put in as a marker value, swapped for the raw text after dumping
RAW_SCALARS = [
    "2020-13-45",  # PyYAML reads a date and raises ValueError
    "9" * 5000,  # past Python's int-from-text digit limit
    "1e999",
    ".inf",
    "-.nan",
    "0x_",
    "!!binary AAAA",
    "!!python/object:os.system x",
    "&loop [*loop]",
    "!!set {a, b}",
    "!!timestamp 2001-12-14t21:59:43.10-05:00",
    "*undefined",
    "{a: 1, a: 2}",
]
_MARK = "RAWSCALAR{}X"

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_values = st.sampled_from(WEIRD_VALUES) | st.recursive(
    _scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6
)
_keys = st.sampled_from(["name", "kind", "text", "value", "weight", "x", "", "a b", "1", "doctor"]) | st.text(
    max_size=8
)


def _paths(node, prefix=()):
    """Every path into a nested dict/list (not the root)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _swap_type(value):
    if isinstance(value, dict):
        return list(value) or [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)} if value else "[]"
    if isinstance(value, bool):
        return "true" if value else 0
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    return {"value": value}


@st.composite
def mutated(draw, data):
    """The parsed data with 1-3 mutations at random paths."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        if not paths or draw(st.integers(0, 30)) == 0:
            data = draw(st.sampled_from([None, [], "x", 3, [data], {"doc": data}]))
            continue
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = draw(st.sampled_from(["delete", "replace", "replace", "swap", "add_key", "number", "raw"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(_values)
        elif op == "raw":
            parent[key] = _MARK.format(draw(st.integers(0, len(RAW_SCALARS) - 1)))
        elif op == "swap":
            parent[key] = _swap_type(parent[key])
        elif op == "number":
            old = parent[key]
            base = old if isinstance(old, int | float) and not isinstance(old, bool) else 1
            parent[key] = draw(
                st.sampled_from([-base, base * 1e6, base + 1e-7, base - 1e-7, 2**70, -(2**70), math.nan])
            )
        elif isinstance(parent[key], dict):
            parent[key][draw(_keys)] = draw(_values)
        else:
            parent[key] = {draw(_keys): parent[key]}
    return data


_SPLICES = [
    b"\x00",
    b"\xff\xfe",
    b"\xe9",
    b"\xc3",
    b"\x07",
    b"\t",
    b"\r",
    b"\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b": ",
    b"- ",
    b"&a ",
    b"*a",
    b"*b ",
    b"!!python/object:os.system ",
    b"!!binary ",
    b"? ",
    b"'",
    b'"',
    b"#",
    b"%YAML 1.1\n",
    b"---\n",
    b"...\n",
    b"\n  - ",
    b"<<: ",
    b"9" * 5000,
    b"2020-13-45",
    b".nan",
    b"-.inf",
    b"1e999",
    b"0x1F",
    b"0o17",
    b"~",
]


@st.composite
def corrupted(draw, raw: bytes):
    """The file's bytes truncated, with bytes inserted, or with a span overwritten."""
    op = draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    offset = draw(st.integers(0, len(raw)))
    if op == "truncate":
        return raw[:offset]
    splice = draw(st.sampled_from(_SPLICES) | st.binary(min_size=1, max_size=6))
    if op == "insert":
        return raw[:offset] + splice + raw[offset:]
    return raw[:offset] + splice + raw[offset + len(splice) :]


def broken_files(data, raw: bytes):
    """Bytes of a broken file: a mutated document dumped as YAML, or the raw bytes corrupted."""
    return mutated(data).map(_dump) | corrupted(raw)


def _dump(data) -> bytes:
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=10**6)
    for i, raw in enumerate(RAW_SCALARS):
        text = text.replace(_MARK.format(i), raw)
    return text.encode()


def check_outcome(load, path, kind: str):
    """Run `load()`: it succeeds, or raises one `FairdiffError` line naming the file kind and the file."""
    try:
        return load()
    except FairdiffError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1 and "\n" not in message, message
        assert message.startswith(f"{kind} {path}"), message
        return None
