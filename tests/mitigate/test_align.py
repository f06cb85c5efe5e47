"""`--method align` (distributional alignment): the target assignment, and the method on the bundled model and a
random SD 1.x pipeline with hand-built training contexts (tiny batches, 2 denoising steps)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairdiff.errors import FairdiffError
from fairdiff.mitigate.align import AlignMethod, AlignOptions, assign_targets, chosen_steps, predicted_x0
from fairdiff.mitigate.training import MitigateConfig, TrainContext, method_class
from fairdiff.mix import joint_cells, largest_remainder

CLASSES = {"gender": ["man", "woman"], "skin": ["light", "medium", "brown", "dark"]}
UNIFORM = {"gender": {"man": 0.5, "woman": 0.5}, "skin": {v: 0.25 for v in CLASSES["skin"]}}
LORA_TARGETS = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]


def _probs(rng: np.random.Generator, n: int, sharp: float = 3.0) -> dict[str, np.ndarray]:
    out = {}
    for a, values in CLASSES.items():
        logits = sharp * rng.standard_normal((n, len(values)))
        e = np.exp(logits - logits.max(1, keepdims=True))
        out[a] = e / e.sum(1, keepdims=True)
    return out


def _cell_counts(targets: dict[str, np.ndarray], mix) -> list[int]:
    return [
        int(np.sum(np.all([targets[a] == CLASSES[a].index(v) for a, v in cell.items()], axis=0)))
        for cell, _ in joint_cells(mix)
    ]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**16), man=st.sampled_from([0.5, 0.3, 1.0]))
def test_assignment_counts_match_the_mix_exactly(n, seed, man):
    mix = {"gender": {"man": man, "woman": 1 - man}, "skin": UNIFORM["skin"]}
    got = assign_targets(_probs(np.random.default_rng(seed), n), mix, CLASSES)
    assert _cell_counts(got.targets, mix) == largest_remainder([p for _, p in joint_cells(mix)], n)
    assert all(len(t) == n for t in got.targets.values())


def test_confident_samples_keep_their_class_and_the_rest_move_at_least_cost():
    # 4 confident men (0.99), 4 unsure (0.6 man): a 4/4 gender mix keeps the confident ones and moves the unsure
    man = np.array([0.99] * 4 + [0.6] * 4)
    probs = {"gender": np.stack([man, 1 - man], 1)}
    got = assign_targets(probs, {"gender": {"man": 0.5, "woman": 0.5}}, CLASSES, keep_confidence=0.9)
    assert got.targets["gender"].tolist() == [0] * 4 + [1] * 4
    assert got.kept.tolist() == [True] * 4 + [False] * 4
    assert got.reassigned.tolist() == [False] * 4 + [True] * 4
    # too many confident men for the seats: the most confident keep theirs, the least confident one moves
    man = np.array([0.99, 0.98, 0.97, 0.95])
    got = assign_targets({"gender": np.stack([man, 1 - man], 1)}, {"gender": {"man": 0.75, "woman": 0.25}}, CLASSES)
    assert got.targets["gender"].tolist() == [0, 0, 0, 1]


def test_assignment_is_joint_and_deterministic():
    rng = np.random.default_rng(3)
    probs = _probs(rng, 16)
    a, b = assign_targets(probs, UNIFORM, CLASSES), assign_targets(probs, UNIFORM, CLASSES)
    assert all(np.array_equal(a.targets[k], b.targets[k]) for k in a.targets)
    assert _cell_counts(a.targets, UNIFORM) == [2] * 8  # every gender x skin cell, not only the marginals
    # an image already in a cell with seats, read confidently, keeps it
    conf = {"gender": np.tile([[0.999, 0.001]], (8, 1)), "skin": np.tile(np.eye(4) * 0.997 + 0.001, (2, 1))}
    got = assign_targets(conf, UNIFORM, CLASSES)
    assert got.targets["skin"].tolist() == [0, 1, 2, 3] * 2
    assert got.targets["gender"].tolist() == [0] * 4 + [1] * 4  # 4 of the 8 confident men must become women
    assert got.kept.sum() == 4 and not got.reassigned[:4].any()


def test_options_are_checked():
    assert AlignOptions.from_options({}).grad_per_step == 2
    with pytest.raises(FairdiffError, match="unknown method option.*lr_boost"):
        AlignOptions.from_options({"lr_boost": 2})
    with pytest.raises(FairdiffError, match="grad_steps"):
        AlignOptions.from_options({"grad_steps": [1.5]})
    with pytest.raises(FairdiffError, match="prompts_per_step"):
        AlignOptions.from_options({"prompts_per_step": 0})
    opts = AlignOptions.from_options({"grad_steps": [0.0, 1.0], "grad_per_step": 5})
    assert chosen_steps(opts, 10, np.random.default_rng(0)) == [0, 9]


def test_predicted_x0_inverts_the_forward_process():
    from diffusers import DPMSolverMultistepScheduler

    for kind in ("v_prediction", "epsilon"):
        sched = DPMSolverMultistepScheduler(prediction_type=kind, beta_schedule="squaredcos_cap_v2")
        x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        t = torch.tensor(700)
        abar = sched.alphas_cumprod[700]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        out = abar.sqrt() * eps - (1 - abar).sqrt() * x0 if kind == "v_prediction" else eps
        assert torch.allclose(predicted_x0(sched, xt, t, out), x0, atol=1e-4)


# -- the method on real pipelines -----------------------------------------------------------------------------


def _with_lora(loaded, rank: int = 4):
    import peft

    pipe = loaded.pipeline
    pipe.unet.requires_grad_(False)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False)
    pipe.unet.add_adapter(peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    return loaded


def _frozen(unet):
    @contextlib.contextmanager
    def frozen():
        unet.disable_adapters()
        try:
            yield
        finally:
            unet.enable_adapters()

    return frozen


@pytest.fixture(scope="module")
def tiny_lora():
    from fairdiff.models.loading import load_pipeline

    loaded = _with_lora(load_pipeline("tiny"))
    init = {n: p.detach().clone() for n, p in loaded.pipeline.unet.named_parameters() if "lora_" in n}
    return loaded, init


@pytest.fixture
def tiny_ctx(tiny_lora):
    from fairdiff.world.classifier import load_classifier

    loaded, init = tiny_lora
    unet = loaded.pipeline.unet
    with torch.no_grad():  # every test starts from the same (zero-delta) LoRA
        for n, p in unet.named_parameters():
            if n in init:
                p.copy_(init[n])
            p.grad = None

    def make(mix=UNIFORM, **options):
        cfg = MitigateConfig(batch_size=8, sample_steps=2, seed=0, method_options=options)
        prompts = [f"a photo of the face of a {o}" for o in ("doctor", "nurse", "ceo")]
        return TrainContext(
            loaded=loaded,
            cfg=cfg,
            prompts=prompts,
            mix=mix,
            device=torch.device("cpu"),
            classifier=load_classifier(),
            frozen=_frozen(unet),
        )

    return make


def test_align_is_registered_and_refuses_a_run_without_a_classifier(tiny_ctx):
    ctx = tiny_ctx()
    assert method_class("align") is AlignMethod
    ctx.classifier = None
    with pytest.raises(FairdiffError, match="--method align needs a differentiable classifier"):
        AlignMethod(ctx)
    with pytest.raises(FairdiffError, match="does not split evenly"):
        AlignMethod(tiny_ctx(prompts_per_step=3))


def test_loss_is_deterministic_and_only_lora_gets_gradients(tiny_ctx):
    method = AlignMethod(tiny_ctx(grad_per_step=1))
    loss, stats = method.loss(3)
    again, stats2 = method.loss(3)
    assert float(loss.detach()) == float(again.detach()) and stats == stats2
    assert method.batch(3) == method.batch(3) and method.batch(3) != method.batch(4)
    assert abs(stats["share_gender_man"] + stats["share_gender_woman"] - 1) < 1e-9
    assert {"loss_align", "loss_preserve", "reassigned"} <= set(stats)
    loss.backward()
    unet = method.ctx.loaded.pipeline.unet
    with_grad = [n for n, p in unet.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any(float(unet.get_parameter(n).grad.abs().sum()) > 0 for n in with_grad)
    assert all(p.grad is None for p in method.ctx.classifier.parameters())


def test_loss_decreases_when_training_toward_one_gender(tiny_ctx):
    # a mix of all women fixes the targets, so a few steps on one batch must lower its alignment loss
    ctx = tiny_ctx(mix={"gender": {"man": 0.0, "woman": 1.0}}, grad_per_step=2, preserve_weight=0.0)
    method = AlignMethod(ctx)
    params = [p for p in ctx.loaded.pipeline.unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(4):
        loss, _ = method.loss(0)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.1, losses


def test_align_runs_on_a_random_sd_pipeline_with_the_world_classifier():
    from fairdiff.models.loading import LoadedModel
    from fairdiff.models.random_pipelines import tiny_sd_pipeline
    from fairdiff.world.classifier import load_classifier

    loaded = _with_lora(LoadedModel(pipeline=tiny_sd_pipeline(seed=0), name="random-sd", kind="sd", source="."))
    unet = loaded.pipeline.unet
    cfg = MitigateConfig(batch_size=2, sample_steps=1, method_options={"prompts_per_step": 1})
    ctx = TrainContext(
        loaded=loaded,
        cfg=cfg,
        prompts=["a photo of a doctor"],
        mix={"gender": {"man": 0.5, "woman": 0.5}},
        device=torch.device("cpu"),
        classifier=load_classifier(),  # on the VAE's images resized to 32x32
        frozen=_frozen(unet),
    )
    method = AlignMethod(ctx)
    loss, stats = method.loss(0)
    assert torch.isfinite(loss) and stats["share_gender_man"] + stats["share_gender_woman"] == 1
    loss.backward()
    grads = [p.grad for n, p in unet.named_parameters() if "lora_" in n]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for n, p in unet.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in loaded.pipeline.vae.parameters())


def test_align_trains_in_the_shared_loop_with_the_text_encoder(tmp_path):
    import json

    from fairdiff.mitigate.training import train_mitigation

    cfg = MitigateConfig(
        method="align", target="both", rank=2, alpha=2, steps=1, batch_size=4, sample_steps=2, checkpoint_every=1
    )
    out = train_mitigation(cfg, "tiny", tmp_path / "run", prompts=["a photo of the face of a doctor", "a nurse"])
    assert out.is_dir()
    (line,) = (tmp_path / "run" / "train.jsonl").read_text().splitlines()
    stats = json.loads(line)["stats"]
    assert {"loss_align", "loss_preserve", "reassigned", "share_skin_dark"} <= set(stats)
