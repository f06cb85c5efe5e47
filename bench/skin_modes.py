"""Diagnostics behind docs/model-card.md's "Why: the model draws skin colours between the world's bins".

    python bench/skin_modes.py samplers [--model DIR] [--n 400] dpm:25 ea:50 sde:50 ddpm:250 euler:200
        skin shares, max error vs the world config, validity and off-palette share for housekeeper and nurse
        at guidance 1, per sampler:steps (same seeds for every sampler); then the shares among on-palette faces
    python bench/skin_modes.py x0 [--model DIR]
        mean face luminance of the model's x0-prediction from noised dark / brown housekeeper renders, per t
    python bench/skin_modes.py posterior [--model DIR]
        the model's x0-prediction of the face colour from noised dark / brown housekeeper renders at high t, beside
        the Bayes posterior mean of an oracle that knows which pixels are skin (the sharpest a denoiser can be)
    python bench/skin_modes.py boundary
        where the world classifier's skin label flips on faces recoloured between two neighbouring bins

Printed, not written: these are one-off measurements on 2 CPU cores (a few minutes each), not gates.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

import fairdiff.world.render as render
from fairdiff.models.loading import load_pipeline
from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw
from fairdiff.models.tiny import TINY_SCHEDULER_CONFIG
from fairdiff.world.classifier import load_classifier, predict_probs
from fairdiff.world.config import load_world_config
from fairdiff.world.gates import OFF_PALETTE
from fairdiff.world.schema import SKINS, Portrait
from fairdiff.world.train_model import to_model_space

SAMPLERS = {
    "dpm": lambda c: DPMSolverMultistepScheduler.from_config(c),
    "sde": lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="sde-dpmsolver++"),
    "ea": lambda c: EulerAncestralDiscreteScheduler.from_config(c),
    "ddpm": lambda c: DDPMScheduler.from_config(c),
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
}


def samplers(model: str, n: int, specs: list[str]) -> None:
    loaded, classifier, world = load_pipeline(model), load_classifier(), load_world_config()
    config = loaded.pipeline.scheduler.config
    for spec in specs:
        name, steps = spec.split(":")
        loaded.pipeline.scheduler = SAMPLERS[name](config)
        for occ in ("housekeeper", "nurse"):
            prompt = f"a photo of the face of a {occ}"
            images = np.concatenate(
                [
                    draw(
                        loaded,
                        SamplingRequest([ImageOptions(prompt, "", i, 1.0) for i in range(s, s + 100)], int(steps)),
                    )
                    for s in range(0, n, 100)
                ]
            )
            probs = predict_probs(classifier, images)
            valid = np.all([p.max(1) >= 0.9 for p in probs.values()], axis=0).mean()
            labels, truth = probs["skin"].argmax(1), world.expected_shares(occ)["skin"]
            shares = {s: float(np.mean(labels == i)) for i, s in enumerate(SKINS)}
            err = max(abs(shares[s] - truth[s]) for s in SKINS)
            on = render.palette_distance(images) <= OFF_PALETTE
            # shares among faces in a colour the world draws: if these match the world config, the error is all
            # in-between faces; if not, the model also weighs the bins wrongly
            if on.any():
                on_shares = {s: float(np.mean(labels[on] == i)) for i, s in enumerate(SKINS)}
                on_err = f"{max(abs(on_shares[s] - truth[s]) for s in SKINS):.3f}"
                on_shown = " ".join(f"{v:.3f}" for v in on_shares.values())
            else:  # an early checkpoint may draw no face in a render's colour
                on_err, on_shown = "-", "no face on the palette"
            # which label the in-between faces get: the share of each label's faces that are off-palette
            off_by = " ".join(
                f"{s} {np.mean(~on[labels == i]) if (labels == i).any() else 0:.2f}" for i, s in enumerate(SKINS)
            )
            shown = " ".join(f"{s} {v:.3f}" for s, v in shares.items())
            print(
                f"{spec:10s} {occ:12s} {shown}  max err {err:.3f}  valid {valid:.3f}  off-palette {1 - on.mean():.3f}"
                f"  | on-palette only: {on_shown}  max err {on_err}  | off-palette share per label: {off_by}"
            )


def _noise_and_denoise(pipe, clean: torch.Tensor, t: int, emb: torch.Tensor):
    """(alpha_bar_t, x_t, the model's x0-prediction) for renders `clean` noised to step t (noise seeded by t), in
    clean's dtype."""
    a = DDPMScheduler(**TINY_SCHEDULER_CONFIG).alphas_cumprod[t].to(clean.dtype)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(t)).to(clean.dtype)
    xt = a.sqrt() * clean + (1 - a).sqrt() * noise
    v = pipe.unet(xt.float(), torch.full((len(clean),), t), encoder_hidden_states=emb).sample.to(clean.dtype)
    return a, xt, a.sqrt() * xt - (1 - a).sqrt() * v


@torch.no_grad()
def x0(model: str, n: int = 64) -> None:
    pipe = load_pipeline(model).pipeline
    emb = pipe.encode_prompt(["a photo of the face of a housekeeper"] * n)

    def face_lum(x: torch.Tensor) -> torch.Tensor:  # model space (N,3,32,32) -> (N,) grey levels
        return (x[:, :, render.FACE_ROWS, render.FACE_COLS].mean((1, 2, 3)) + 1) * 127.5

    for skin in ("dark", "brown"):
        portraits = [Portrait("woman", skin, "young", "covered", "housekeeper")] * n
        clean = to_model_space(render.render_batch(portraits, list(range(n))))
        row = [f"{skin:6s} render {face_lum(clean).mean():5.0f}"]
        for t in (200, 400, 600, 750, 850, 925):
            lum = face_lum(_noise_and_denoise(pipe, clean, t, emb)[2])
            row.append(f"t={t}: {lum.mean():4.0f} +- {lum.std():3.0f}")
        print("  ".join(row))


@torch.no_grad()
def posterior(model: str, n: int = 64) -> None:
    """Mode commitment at high noise. Given x_t, the mean colour of the m skin pixels is a Gaussian observation
    of sqrt(a) * c with variance (1 - a) / m per channel, so the posterior over the skin colours c_k (prior: the
    housekeeper's bin shares, swatches uniform within a bin) is exact for an oracle that knows the skin mask;
    the model, which must also find the face, can at best match it."""
    pipe, world = load_pipeline(model).pipeline, load_world_config()
    emb = pipe.encode_prompt(["a photo of the face of a housekeeper"] * n)
    shares = world.expected_shares("housekeeper")["skin"]
    palette = torch.from_numpy(render.skin_palette()) / 127.5 - 1  # (K, 3) model space
    prior = torch.tensor([shares[k] / len(render._MST[k]) for k in SKINS for _ in render._MST[k]]).double()

    def lum(colour: torch.Tensor) -> torch.Tensor:  # (N, 3) model space -> (N,) grey levels
        return (colour.mean(1) + 1) * 127.5

    for skin in ("dark", "brown"):
        portraits = [Portrait("woman", skin, "young", "covered", "housekeeper")] * n
        images = render.render_batch(portraits, list(range(n)))
        face = render.face_colour(images)
        mask = torch.from_numpy(np.linalg.norm(images - face[:, None, None], axis=-1) < 12).double()  # skin px
        m = mask.sum((1, 2))  # (N,)
        clean = to_model_space(images).double()

        def masked_mean(x: torch.Tensor, mask=mask, m=m) -> torch.Tensor:  # (N, 3, H, W) -> (N, 3)
            return (x * mask[:, None]).sum((2, 3)) / m[:, None]

        print(f"{skin} housekeepers: face luminance {lum(masked_mean(clean)).mean():.0f}, {m.mean():.0f} skin pixels")
        for t in (700, 800, 850, 875, 900, 925, 950, 975):
            a, xt, x0_hat = _noise_and_denoise(pipe, clean, t, emb)
            model_lum = lum(masked_mean(x0_hat))
            obs = masked_mean(xt)  # (N, 3)
            sq = ((obs[:, None, :] - a.sqrt() * palette[None]) ** 2).sum(2)  # (N, K)
            post = torch.softmax(prior.log()[None] - m[:, None] * sq / (2 * (1 - a)), dim=1)
            oracle_lum = lum(post @ palette)
            print(
                f"  t={t}: model {model_lum.mean():5.1f} +- {model_lum.std():4.1f}   "
                f"oracle {oracle_lum.mean():5.1f} +- {oracle_lum.std():4.1f}   "
                f"|model - oracle| {(model_lum - oracle_lum).abs().mean():4.1f}"
            )


def boundary() -> None:
    classifier = load_classifier()
    saved = (dict(render._SKIN_MEAN), dict(render._MST))
    try:
        for lo, hi in (("dark", "brown"), ("brown", "medium"), ("medium", "light")):
            a, b = saved[0][lo], saved[0][hi]
            cells = []
            for w in np.linspace(0, 1, 21):
                colour = a * (1 - w) + b * w  # paint every "dark" face in this colour
                render._SKIN_MEAN["dark"], render._MST["dark"] = colour, [tuple(colour)]
                portraits = [Portrait(g, "dark", "young", "covered", "housekeeper") for g in ("woman", "man")] * 50
                probs = predict_probs(classifier, render.render_batch(portraits, list(range(100))))["skin"]
                label = SKINS[np.bincount(probs.argmax(1), minlength=len(SKINS)).argmax()]
                cells.append(f"{w:.2f}:{label[0].upper()}{probs.max(1).mean():.2f}")
            print(f"{lo} -> {hi} (fraction of the way: majority label + mean confidence)")
            print(" ".join(cells))
    finally:
        render._SKIN_MEAN.update(saved[0])
        render._MST.update(saved[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("samplers", "x0", "posterior", "boundary"))
    parser.add_argument("specs", nargs="*", default=["dpm:25"], help="sampler:steps, for `samplers`")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=int, default=400, help="images per occupation (multiple of 100)")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(2)
    if args.what == "samplers":
        samplers(args.model, args.n, args.specs)
    elif args.what == "x0":
        x0(args.model)
    elif args.what == "posterior":
        posterior(args.model)
    else:
        boundary()


if __name__ == "__main__":
    main()
