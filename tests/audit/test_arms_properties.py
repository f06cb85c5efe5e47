"""Property test of the arm-file loader: a mutated or truncated arm file loads into arms, or fails with one line
that names the file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings

from config_mutations import broken_files, check_outcome
from fairdiff.audit.arm_specs import load_arms_file
from fairdiff.audit.arms import arm_from_spec, check_arms
from fairdiff.errors import FairdiffError

ADAPTER = str(Path(__file__).resolve())  # any existing path passes the loader's file check
ARMS = [
    {"kind": "base", "name": "base"},
    {"kind": "base", "name": "g1", "guidance": 1},
    {"kind": "negative", "name": "no-revealing", "negative": "revealing clothes", "guidance": 3.5},
    {"kind": "adapter", "name": "both", "adapters": [ADAPTER, f"{ADAPTER}:-0.5"], "allow_pickle": False},
    {"name": "kindless"},
]
RAW = yaml.safe_dump(ARMS, sort_keys=False).encode()


def test_the_valid_file_loads_every_kind(tmp_path):
    path = tmp_path / "arms.yaml"
    path.write_bytes(RAW)
    arms = [arm_from_spec(s) for s in load_arms_file(path)]
    assert [a.kind for a in arms] == ["base", "base", "negative", "adapter", "base"]
    assert arms[1].guidance == 1.0 and arms[3].adapters[1].endswith(":-0.5")
    assert [arm_from_spec(a.spec()).spec() for a in arms] == [a.spec() for a in arms]  # what a run dir stores


@settings(max_examples=300, deadline=None)
@given(broken_files(ARMS, RAW))
def test_a_broken_arms_file_is_one_error_line_or_arms(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arms.yaml"
        path.write_bytes(content)
        specs = check_outcome(lambda: load_arms_file(path), path, "arms")
    if specs is not None:
        arms = [arm_from_spec(s) for s in specs]  # what passed the file's check builds without another error
        try:
            check_arms(arms)  # across arms: unique names, at least one
        except FairdiffError as exc:
            assert len(str(exc).splitlines()) == 1
