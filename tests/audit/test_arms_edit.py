"""The `edit` arm: its spec (file + sha256), batch key, a real audit with it beside base, bit-exact restore of W0
after its batches, and bad edit files refused before anything is drawn."""

from __future__ import annotations

import pytest
import torch

from fairdiff.audit.arm_specs import check_arm_spec
from fairdiff.audit.arms import Arm, ArmRuntime, arm_from_spec
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.audit.store import read_rows
from fairdiff.errors import FairdiffError
from fairdiff.files import file_sha256
from fairdiff.mitigate.edit_file import EditFile, write_edit
from fairdiff.models.attention import cross_attention_layers
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny"), build_detector("world", measure_accuracy=False)


@pytest.fixture(scope="module")
def edit_path(tiny, tmp_path_factory):
    """A non-zero edit of every cross-attention to_k / to_v of the bundled UNet (random: the arm does not care
    how an edit was made)."""
    loaded, _ = tiny
    g = torch.Generator().manual_seed(0)
    deltas = {}
    for layer in cross_attention_layers(loaded.pipeline.unet):
        for p in ("to_k", "to_v"):
            w = getattr(layer.module, p).weight
            deltas[f"{layer.name}.{p}"] = torch.randn(w.shape, generator=g) * 0.2
    path = tmp_path_factory.mktemp("edit") / "edit.safetensors"
    write_edit(EditFile(deltas, meta={"base_model": {"weight_hashes": loaded.weight_hashes()}}), path)
    return path


def test_spec_records_file_and_sha256_and_rebuilds(edit_path):
    arm = arm_from_spec({"kind": "edit", "name": "uce", "edit": str(edit_path)})
    spec = arm.spec()
    assert spec["kind"] == "edit" and spec["edit"] == str(edit_path) and spec["scale"] == 1.0
    assert spec["sha256"] == file_sha256(edit_path)
    again = arm_from_spec(spec)
    assert again.spec() == spec
    again.check()
    assert arm.batch_key(None) != Arm().batch_key(None)
    assert arm_from_spec({**spec, "scale": 0.5}).batch_key(None) != arm.batch_key(None)


def test_bad_specs_and_files_are_one_error(edit_path, tmp_path):
    with pytest.raises(FairdiffError, match="no such file"):
        check_arm_spec({"kind": "edit", "name": "e", "edit": str(tmp_path / "missing.safetensors")})
    with pytest.raises(FairdiffError, match="scale"):
        check_arm_spec({"kind": "edit", "name": "e", "edit": str(edit_path), "scale": "big"})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(FairdiffError, match="not a readable safetensors file"):
        arm_from_spec({"kind": "edit", "name": "e", "edit": str(bad)}).check()
    changed = {"kind": "edit", "name": "e", "edit": str(edit_path), "sha256": "0" * 64}
    with pytest.raises(FairdiffError, match="the file changed"):
        arm_from_spec(changed).check()
    cfg = AuditConfig(suites=["world-occupations"], arms=[{"kind": "edit", "name": "e", "edit": str(bad)}])
    with pytest.raises(FairdiffError, match="not a readable safetensors file"):
        run_audit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_base_images_are_bit_identical_after_an_edit_batch(tiny, edit_path):
    loaded, _ = tiny
    unet = loaded.pipeline.unet
    request = SamplingRequest([ImageOptions("a photo of the face of a doctor", "", s) for s in (0, 1)], steps=2)
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    before = draw(loaded, request)
    arm = arm_from_spec({"kind": "edit", "name": "uce", "edit": str(edit_path)})
    runtime = ArmRuntime(loaded)
    arm.setup(runtime)
    with arm.sampling(runtime, []) as extra:
        assert extra == {}
        edited = draw(arm.model(runtime), request)
    after = draw(loaded, request)
    assert (before == after).all() and not (edited == before).all()
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())


def test_edit_arm_in_a_real_audit_beside_base(tiny, edit_path, tmp_path):
    loaded, detector = tiny
    arms = [{"kind": "base", "name": "base"}, {"kind": "edit", "name": "uce", "edit": str(edit_path)}]
    cfg = AuditConfig(suites=["world-occupations"], arms=arms, images_per_prompt=2, max_prompts=1, steps=2)
    record = run_audit(cfg, tmp_path / "run", loaded=loaded, detector=detector)
    assert [a["kind"] for a in record["arms"]] == ["base", "edit"]
    assert record["arms"][1]["sha256"] == file_sha256(edit_path)
    rows = {(r.arm, r.seed): r.sha256 for r in read_rows(tmp_path / "run")}
    assert len(rows) == 4
    assert any(rows[("base", s)] != rows[("uce", s)] for s in (0, 1))
    base_only = AuditConfig(suites=["world-occupations"], images_per_prompt=2, max_prompts=1, steps=2)
    run_audit(base_only, tmp_path / "base", loaded=loaded, detector=detector)
    alone = {(r.arm, r.seed): r.sha256 for r in read_rows(tmp_path / "base")}
    assert all(alone[("base", s)] == rows[("base", s)] for s in (0, 1))  # the edit arm left base untouched
