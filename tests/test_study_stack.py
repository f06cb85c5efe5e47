"""The stack study: the adapter library, activation offsets, and a quick `run_stack` (every method at k = 1, 2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairdiff.errors import FairdiffError
from fairdiff.study.library import LibraryConfig, conflicts, library_specs
from fairdiff.study.stack import COLUMNS, METHODS, STACK_MEASURES, StackConfig, run_stack
from fairdiff.study.steering import install_offsets, stack_offsets


def test_full_library_has_128_distinct_adapters_with_unique_targets():
    specs = library_specs(LibraryConfig())
    assert len(specs) >= 128
    assert len({s.id for s in specs}) == len(specs)
    assert len({(s.concept.lower(), s.attribute, s.value) for s in specs}) == len(specs)
    assert {s.attribute for s in specs} == {"gender", "skin", "age"}
    # drift occupations stay out of the library
    assert not {s.occupation for s in specs} & {"scientist", "cashier"}
    assert all(len(s.target_prompts) == 1 and s.target_prompts[0].endswith(f" {s.concept}") for s in specs)
    assert specs[0].target_prompts[0].startswith("a photo of the face of a")


def test_stack_order_puts_conflicts_late_and_fixes_the_least_likely_value_first():
    specs = library_specs(LibraryConfig())
    assert conflicts(specs[:48]) == 0
    assert conflicts(specs[:49]) == 1
    first = {(s.concept, s.attribute): s.value for s in specs[:48]}
    assert first["nurse", "gender"] == "man"  # P(man | nurse) = 0.12 in the default world
    assert first["doctor", "skin"] == "dark"  # 0.05
    assert first["CEO", "age"] == "young"  # 0.30
    assert library_specs(LibraryConfig()) == specs  # deterministic
    assert library_specs(LibraryConfig(seed=1)) != specs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"occupations": ("plumber",)}, "world occupations"),
        ({"occupations": ("nurse", "nurse")}, "distinct"),
        ({"strength": 0.0}, "strength"),
        ({"rank": 0}, "rank"),
    ],
)
def test_library_config_errors(kwargs, message):
    with pytest.raises(FairdiffError, match=message):
        library_specs(LibraryConfig(**kwargs))


def test_stack_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(FairdiffError, match="bogus"):
        StackConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="increasing"):
        StackConfig(ks=(4, 2))
    with pytest.raises(ValueError, match="methods"):
        StackConfig(methods=("naive_sum", "magic"))
    with pytest.raises(ValueError, match="out of the library"):
        StackConfig(drift_occupations=("nurse",))
    assert StackConfig().ks == (1, 2, 4, 8, 16, 32, 64, 128)
    assert set(STACK_MEASURES) >= {
        "effect_kept",
        "drift_tv",
        "explicit_accuracy",
        "validity",
        "fd",
        "restored_bit_exact",
    }


def test_activation_offsets_add_a_constant_and_restore_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    before = model(x).clone()
    offset = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    with install_offsets(model, {"0": offset}):
        inside = model[0](x)
        assert torch.allclose(inside - torch.nn.functional.linear(x, model[0].weight, model[0].bias), offset.float())
        assert not torch.equal(model(x), before)
    assert torch.equal(model(x), before)
    assert not model[0]._forward_hooks
    with pytest.raises(RuntimeError), install_offsets(model, {"0": offset}):
        raise RuntimeError("boom")
    assert not model[0]._forward_hooks and torch.equal(model(x), before)
    with pytest.raises(FairdiffError, match="expected 3 finite values"), install_offsets(model, {"0": torch.zeros(4)}):
        pass
    with pytest.raises(FairdiffError, match="expected a Linear"), install_offsets(model, {"1": torch.zeros(3)}):
        pass


def test_stack_offsets_are_delta_w_times_mean_embedding():
    from fairdiff.adapters.formats import LoRAAdapter, LoRALayer

    A, B = torch.randn(2, 4), torch.randn(3, 2)
    lora = LoRAAdapter({"unet": {"m": LoRALayer(A=A, B=B, alpha=2.0, scale=0.5)}}, format="peft", source="t")
    means = torch.randn(2, 4, dtype=torch.float64)
    total = stack_offsets([lora, lora], means, weights=[1.0, -2.0])
    delta = 0.5 * (B.double() @ A.double())
    assert torch.allclose(total["m"], delta @ means[0] - 2.0 * (delta @ means[1]))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stack")
    seen = []
    frame = run_stack(StackConfig.quick(), out, on_progress=lambda d, t, label: seen.append((d, t, label)))
    return out, frame, seen


def test_quick_run_schema_and_every_method_at_k2(quick_run):
    out, frame, seen = quick_run
    cfg = StackConfig.quick()
    assert list(frame.columns) == COLUMNS
    cells = frame[frame["method"] != "base"]
    assert set(cells["method"]) == set(METHODS)
    assert set(cells["k"]) == {1, 2}
    per = cells.groupby(["method", "k"])["measure"].apply(list)
    assert all(sorted(m) == sorted(STACK_MEASURES) for m in per)
    assert not frame.duplicated(["method", "k", "measure"]).any()
    base = frame[frame["method"] == "base"]
    assert set(base["measure"]) == {"explicit_accuracy", "validity", "fd"} and set(base["k"]) == {0}
    finite = cells[cells["measure"] != "effect_kept"]  # effect_kept is NaN when an adapter did nothing alone
    assert np.isfinite(finite["value"]).all()
    assert (finite["ci_low"] <= finite["value"] + 1e-9).all() and (finite["value"] <= finite["ci_high"] + 1e-9).all()
    shares = cells[cells["measure"].isin(["explicit_accuracy", "validity", "drift_tv"])]["value"]
    assert ((shares >= 0) & (shares <= 1)).all()
    assert seen[-1][0] == seen[-1][1] == 1 + cfg.track + len(METHODS) * len(cfg.ks)
    csv = pd.read_csv(out / "stack.csv")
    assert len(csv) == len(frame)
    # 16 adapters built (nurse, caregiver x 8 values), each a PEFT directory with its recorded sha256
    manifest = json.loads(next((out / "library").glob("*/manifest.json")).read_text())
    assert len(manifest["adapters"]) == 16
    assert len({a["spec"]["id"] for a in manifest["adapters"]}) == 16


def test_every_method_gives_the_base_back_bit_for_bit(quick_run):
    _, frame, _ = quick_run
    restored = frame[frame["measure"] == "restored_bit_exact"]
    assert len(restored) == len(METHODS) * 2
    assert (restored["value"] == 1.0).all()


def test_stacked_weights_change_the_images(quick_run):
    out, _, _ = quick_run
    # drift_tv 0 on every cell would mean the stacks did nothing: the naive sum of 2 adapters must move something
    frame = pd.read_csv(out / "stack.csv")
    moved = frame[(frame["measure"] == "drift_tv") | (frame["measure"] == "effect_shift")]
    assert (moved["value"].abs() > 0).any()


def test_rerun_resumes_without_drawing(quick_run, monkeypatch):
    out, frame, _ = quick_run

    def no(*args, **kwargs):
        raise AssertionError("a resumed run must not draw or load the model")

    monkeypatch.setattr("fairdiff.models.sampling.draw", no)
    monkeypatch.setattr("fairdiff.models.loading.load_pipeline", no)
    again = run_stack(StackConfig.quick(), out)
    pd.testing.assert_frame_equal(again, frame)


def test_a_changed_library_file_is_one_clear_error(quick_run):
    from fairdiff.study.library import _read_manifest

    out, _, _ = quick_run
    root = next((out / "library").glob("*/manifest.json")).parent
    adapters = _read_manifest(root, StackConfig.quick().library())
    adapter = adapters[0]
    weights = next(adapter.path.rglob("adapter_model.safetensors"))
    original = weights.read_bytes()
    try:
        weights.write_bytes(b"not a safetensors file")
        with pytest.raises(FairdiffError, match=r"changed after the library was built"):
            adapter.load()
    finally:
        weights.write_bytes(original)
    assert adapter.load().components  # the original bytes read again
