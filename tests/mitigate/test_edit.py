"""The closed-form UCE edit: the formula, preserved vs edited outputs, the re-estimation loop, edit files (good and
bad), the edit as a LoRA, and the command on the bundled model and on tiny random SD 1.x / SDXL pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fairdiff.cli import app
from fairdiff.errors import FairdiffError
from fairdiff.mitigate.edit import (
    Concept,
    DrawOptions,
    aligned_rows,
    build_problem,
    closed_form_delta,
    edit_as_lora,
    edit_file,
    fit_edit,
)
from fairdiff.mitigate.edit_file import EditFile, check_edit_fits, read_edit, write_edit
from fairdiff.models.attention import cross_attention_layers, edit_attention

ONE_TEMPLATE = ("a photo of the face of a {}",)


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny"), build_detector("world", measure_accuracy=False)


@pytest.fixture(scope="module")
def problem(tiny):
    loaded, _ = tiny
    concepts = [Concept("doctor", "doctor", ONE_TEMPLATE), Concept("nurse", "nurse", ONE_TEMPLATE)]
    return build_problem(loaded, concepts, {"gender": ["man", "woman"]}), concepts


def test_closed_form_matches_a_direct_numpy_solve():
    rng = np.random.default_rng(0)
    W, C, V, Cp = rng.normal(size=(6, 5)), rng.normal(size=(3, 5)), rng.normal(size=(3, 6)), rng.normal(size=(4, 5))
    lam, s = 0.5, 0.3
    # W' = (λW + Σ v cᵀ + s Σ W c_p c_pᵀ)(λI + Σ c cᵀ + s Σ c_p c_pᵀ)⁻¹, rows of C/V/Cp are the vectors
    direct = (lam * W + V.T @ C + s * W @ Cp.T @ Cp) @ np.linalg.inv(lam * np.eye(5) + C.T @ C + s * Cp.T @ Cp)
    delta = closed_form_delta(*(torch.from_numpy(x) for x in (W, C, V, Cp)), lam, s).numpy()
    np.testing.assert_allclose(W + delta, direct, rtol=1e-10, atol=1e-10)
    # with enough freedom (small λ, no preserved rows) the edited rows reach their targets
    exact = closed_form_delta(torch.from_numpy(W), torch.from_numpy(C), torch.from_numpy(V), None, 1e-9)
    np.testing.assert_allclose(C @ (W + exact.numpy()).T, V, atol=1e-5)


def test_aligned_rows_follow_uce_from_the_concept_token_on():
    concept = [101, 1, 2, 50, 102]  # [CLS] a photo doctor [SEP]
    woman = [101, 1, 2, 60, 50, 102]  # [CLS] a photo woman doctor [SEP]
    rows, attr = aligned_rows(concept, [woman], 8, with_prefix=False, after=1)
    assert rows == [3, 4, 5, 6] and attr == [[4, 5, 6, 7]]  # doctor<->doctor, [SEP]<->[SEP], padding, cut at 8
    rows, attr = aligned_rows(concept, [woman], 8, with_prefix=True, after=1)
    assert rows[:3] == [0, 1, 2] and attr[0][:3] == [0, 1, 2]
    assert aligned_rows(concept, [woman], 5, with_prefix=False, after=1) is None  # the attribute text does not fit


def test_problem_deltas_are_the_closed_form_of_uce_targets(problem):
    pb, _ = problem
    alpha = {"doctor": {"gender": {"woman": 0.4, "man": -0.4}}, "nurse": {"gender": {"man": 0.3, "woman": -0.3}}}
    deltas = pb.deltas(alpha)
    assert set(deltas) == set(pb.keys) and all(k.endswith((".to_k", ".to_v")) for k in pb.keys)
    key = pb.keys[1]
    direct = closed_form_delta(pb.weights[key], pb.C, pb.targets(key, alpha), pb.Cp, pb.lam, pb.preserve_scale)
    torch.testing.assert_close(deltas[key], direct.float(), rtol=1e-5, atol=1e-6)
    assert all(d.abs().max() == 0 for d in pb.deltas({}).values())  # α = 0: no edit


def test_preserved_outputs_stay_and_edited_ones_move(problem):
    pb, _ = problem
    alpha = {"doctor": {"gender": {"woman": 0.5, "man": -0.5}}}
    assert "" in pb.preserve_texts and "a photo of the face of a woman doctor" in pb.preserve_texts
    for key, delta in pb.deltas(alpha).items():
        W = pb.weights[key]
        doctor = pb.C[pb.blocks[0].rows]
        moved = (doctor @ delta.double().T).norm() / (doctor @ W.T).norm()
        kept = (pb.Cp @ delta.double().T).norm() / (pb.Cp @ W.T).norm()
        assert moved > 0.1, (key, moved)
        assert kept < 0.2 * moved, (key, kept, moved)
        # the edited rows move toward their targets
        target = pb.targets(key, alpha)[pb.blocks[0].rows]
        before = (target - doctor @ W.T).norm()
        after = (target - doctor @ (W + delta.double()).T).norm()
        assert after < 0.5 * before


def test_fit_edit_measures_moves_alpha_and_records_history(tiny, problem):
    loaded, detector = tiny
    pb, concepts = problem
    mix = {"gender": {"man": 0.5, "woman": 0.5}}
    rounds = []
    fit = fit_edit(
        pb,
        loaded,
        detector,
        concepts,
        mix,
        DrawOptions(images=2, steps=1),
        iterations=1,
        step=0.5,
        on_round=lambda r, e: rounds.append(r),
    )
    assert rounds == [0, 1] and [h["round"] for h in fit.history] == [0, 1]
    first = fit.history[0]
    assert first["alpha"]["doctor"]["gender"] == {"man": 0.0, "woman": 0.0}
    for name in ("doctor", "nurse"):
        shares = first["shares"][name]["gender"]
        assert sum(shares.values()) == pytest.approx(1.0)
        want = {v: 0.5 * (0.5 - shares[v]) for v in shares}
        if first["max_gap"][name] >= 0.05:
            assert fit.alpha[name]["gender"] == pytest.approx(want)
    torch.testing.assert_close(fit.deltas[pb.keys[0]], pb.deltas(fit.alpha)[pb.keys[0]])


def _random_edit(unet, seed=0, scale=0.05) -> EditFile:
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for layer in cross_attention_layers(unet):
        for p in ("to_k", "to_v"):
            w = getattr(layer.module, p).weight
            deltas[f"{layer.name}.{p}"] = torch.randn(w.shape, generator=g) * scale
    return EditFile(deltas, meta={"method": "test"})


def test_edit_file_round_trips_restores_w0_and_is_deterministic(tiny, tmp_path):
    loaded, _ = tiny
    unet = loaded.pipeline.unet
    edit = _random_edit(unet)
    write_edit(edit, tmp_path / "a.safetensors")
    write_edit(_random_edit(unet), tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    back = read_edit(tmp_path / "a.safetensors")
    assert back.meta == {"method": "test"} and len(back.sha256) == 64
    for key in edit.deltas:
        assert torch.equal(back.deltas[key], edit.deltas[key])
    check_edit_fits(back, unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with edit_attention(unet, deltas=back.deltas):
        key = next(iter(back.deltas))
        assert not torch.equal(unet.get_submodule(key).weight, before[key + ".weight"])
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def _bad_files(tmp_path, unet):
    from safetensors.torch import save_file

    good = _random_edit(unet)
    key = next(iter(good.deltas))
    meta = {"fairdiff_edit": json.dumps({"format": "fairdiff-edit", "version": "1", "edit": {}})}
    files = {}
    files["unknown key"] = {"down_blocks.0.weird": good.deltas[key]}
    files["wrong shape"] = {key: torch.zeros(3, 4)}
    files["nan"] = {key: torch.full_like(good.deltas[key], float("nan"))}
    files["integer"] = {key: torch.zeros(good.deltas[key].shape, dtype=torch.int32)}
    files["not our layer"] = {"down_blocks.9.attentions.0.transformer_blocks.0.attn2.to_k": good.deltas[key]}
    out = {}
    for name, tensors in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        out[name] = path
    save_file(good.deltas, str(tmp_path / "nometa.safetensors"))
    out["no metadata"] = tmp_path / "nometa.safetensors"
    write_edit(good, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    out["truncated"] = tmp_path / "truncated.safetensors"
    torch.save(good.deltas, tmp_path / "pickle.safetensors")
    out["pickle"] = tmp_path / "pickle.safetensors"
    out["missing"] = tmp_path / "nothing.safetensors"
    return out


def test_bad_edit_files_are_one_clear_error(tiny, tmp_path):
    loaded, _ = tiny
    unet = loaded.pipeline.unet
    expected = {
        "unknown key": "unknown key",
        "wrong shape": "has shape (3, 4)",
        "nan": "NaN",
        "integer": "floating point",
        "not our layer": "not a cross-attention projection",
        "no metadata": "not a fairdiff edit file",
        "truncated": "not a readable safetensors file",
        "pickle": "not a readable safetensors file",
        "missing": "no such file",
    }
    for name, path in _bad_files(tmp_path, unet).items():
        with pytest.raises(FairdiffError) as err:
            check_edit_fits(read_edit(path), unet)
        assert expected[name] in str(err.value) and "\n" not in str(err.value), (name, err.value)
    other = _random_edit(unet)
    other.meta = {"base_model": {"weight_hashes": {"unet/diffusion_pytorch_model.safetensors": "0" * 64}}}
    with pytest.raises(FairdiffError, match="made for other weights"):
        check_edit_fits(other, unet, loaded.weight_hashes())


def test_edit_as_lora_full_rank_is_exact_and_loads_as_an_adapter(tiny, tmp_path):
    from fairdiff.adapters.engine import attach_adapters
    from fairdiff.adapters.formats import write_peft
    from fairdiff.adapters.loading import load_adapter

    loaded, _ = tiny
    edit = _random_edit(loaded.pipeline.unet)
    adapter, errors, overall = edit_as_lora(edit.deltas, 10_000)
    assert overall < 1e-4 and max(errors.values()) < 1e-4
    low = edit_as_lora(edit.deltas, 2)
    assert low[2] > 0.5 and all(layer.rank == 2 for layer in low[0].layers.values())  # random ΔW: far from rank 2
    write_peft(adapter, tmp_path / "lora")
    back = load_adapter(tmp_path / "lora")
    for key, layer in back.components["unet"].items():
        torch.testing.assert_close(layer.delta(), edit.deltas[key], atol=1e-5, rtol=1e-4)
    handle = attach_adapters(loaded.pipeline, [back])
    handle.detach()


def _mitigate(args, tmp_path):
    return CliRunner().invoke(app, ["mitigate", "edit", *args, "--out", str(tmp_path / "edit.safetensors")])


def test_command_on_the_bundled_model_writes_an_edit_and_a_lora_that_generate_loads(tmp_path):
    args = ["--concept", "doctor", "--attribute", "gender", "--template", ONE_TEMPLATE[0], "--iterations", "1"]
    result = _mitigate([*args, "--images-per-concept", "2", "--steps", "1", "--as-lora", "384"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "UCE edit: measured shares" in result.stdout and "overall" in result.stdout
    edit = read_edit(tmp_path / "edit.safetensors")
    assert [c["name"] for c in edit.meta["concepts"]] == ["doctor"] and len(edit.meta["history"]) == 2
    assert edit.meta["mix"] == {"gender": {"man": 0.5, "woman": 0.5}} and edit.meta["lambda"] == 0.5
    assert edit.meta["lora"]["overall_relative_error"] < 1e-4
    assert edit.meta["base_model"]["weight_hashes"]
    lora = tmp_path / "edit-lora384"
    gen = CliRunner().invoke(
        app,
        [
            "generate",
            "--prompt",
            "a doctor",
            "-n",
            "1",
            "--steps",
            "1",
            "--adapter",
            str(lora),
            "--out",
            str(tmp_path / "gen"),
        ],
    )
    assert gen.exit_code == 0, gen.output
    assert json.loads(next((tmp_path / "gen").glob("*.json")).read_text())


def test_command_refuses_bad_options_with_one_line(tmp_path):
    for args, message in (
        (["--concept", "doctor", "--template", "no slot"], "needs exactly one '{}'"),
        (["--concept", "doctor", "--attribute", "height"], "--attribute 'height'"),
        (["--concept", "doctor", "--suite", "world-occupations"], "not both"),
        (["--concept", "doctor", "--lambda", "0"], "--lambda must be"),
        (["--concept", "doctor", "--as-lora", "0"], "--as-lora"),
    ):
        result = _mitigate([*args, "--iterations", "0", "--images-per-concept", "1", "--steps", "1"], tmp_path)
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
    assert not (tmp_path / "edit.safetensors").exists()


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_command_runs_on_random_sd_and_sdxl_pipelines(kind, tmp_path):
    from fairdiff.models.random_pipelines import save_tiny_clip, tiny_sd_pipeline, tiny_sdxl_pipeline

    (tiny_sd_pipeline if kind == "sd" else tiny_sdxl_pipeline)(seed=0).save_pretrained(tmp_path / kind)
    save_tiny_clip(tmp_path / "clip")
    args = ["--model", str(tmp_path / kind), "--concept", "doctor", "--attribute", "gender", "--template", "{}"]
    args += ["--preserve", "man", "--iterations", "1", "--images-per-concept", "2", "--steps", "1"]
    args += ["--detector", "clip", "--detector-option", f"checkpoint={tmp_path / 'clip'}", "--as-lora", "2"]
    result = _mitigate([*args, "--height", "32", "--width", "32"], tmp_path)
    assert result.exit_code == 0, result.output
    edit = read_edit(tmp_path / "edit.safetensors")
    assert edit.meta["base_model"]["kind"] == kind and edit.deltas
    assert all(k.endswith((".to_k", ".to_v")) for k in edit.deltas)
    assert any(d.abs().max() > 0 for d in edit.deltas.values()) or edit.meta["history"][0]["max_gap"]["doctor"] < 0.05


def test_edit_file_record_names_what_made_it(tiny, problem):
    loaded, _ = tiny
    pb, concepts = problem
    from fairdiff.mitigate.edit import EditFit

    fit = EditFit(alpha={"doctor": {"gender": {"man": -0.1, "woman": 0.1}}}, deltas=pb.deltas({}), history=[])
    record = edit_file(pb, fit, loaded, concepts, {"gender": {"man": 0.5, "woman": 0.5}}, {"step": 0.5}).meta
    assert record["method"] == "uce" and record["concepts"][0]["texts"] == ["a photo of the face of a doctor"]
    assert record["projections"] == ["to_k", "to_v"] and record["settings"] == {"step": 0.5}


def test_command_takes_concepts_from_a_suite(tmp_path):
    suite = tmp_path / "train.yaml"
    suite.write_text(
        "name: train\nkind: shares\ntemplates:\n  - {text: 'a headshot of an {occupation}'}\n"
        "measure: [gender]\nvalues:\n  occupation: [engineer]\n"
    )
    result = _mitigate(
        ["--suite", str(suite), "--iterations", "0", "--images-per-concept", "1", "--steps", "1"], tmp_path
    )
    assert result.exit_code == 0, result.output
    (concept,) = read_edit(tmp_path / "edit.safetensors").meta["concepts"]
    assert concept["name"] == "engineer" and concept["measure"] == ["a headshot of an engineer"]
    assert (
        concept["texts"][0] == "a headshot of an engineer" and "a photo of the face of an engineer" in concept["texts"]
    )
