"""Property test of the suite loader: a mutated or truncated built-in suite loads, or fails with one line that
names the file."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config_mutations import broken_files, check_outcome
from fairdiff.audit.suites import BUILTIN_SUITES, load_suite

RAW = {name: resources.files("fairdiff.data").joinpath(f"{name}.yaml").read_bytes() for name in BUILTIN_SUITES}
BROKEN = st.sampled_from(BUILTIN_SUITES).flatmap(lambda n: broken_files(yaml.safe_load(RAW[n]), RAW[n]))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BROKEN)
def test_a_broken_suite_file_is_one_error_line_or_a_suite(world, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_bytes(content)
        suite = check_outcome(lambda: load_suite(path, world), path, "suite")
    if suite is not None:
        assert suite.prompts and len({p.id for p in suite.prompts}) == len(suite.prompts)
        assert suite.images_per_prompt >= 1 and suite.spec()["name"] == suite.name
