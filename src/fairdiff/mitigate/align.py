"""`--method align`: distributional alignment (Shen et al., "Finetuning Text-to-Image Diffusion Models for
Fairness", ICLR 2024), a method of the shared training loop (`fairdiff.mitigate.training`).

One optimizer step:

1. Draw a batch with the current model through the sampling seam (`fairdiff.models.sampling.draw`, no gradients,
   the pipeline's own scheduler and classifier-free guidance: DPM-Solver++ on the bundled model): `prompts_per_step`
   training prompts, `batch_size / prompts_per_step` images each, every seed a function of (cfg.seed, step). A
   step hook records the UNet's inputs at the chosen gradient steps.
2. Classify the final images with the differentiable world classifier (resized to 32x32 for SD / SDXL) and assign
   each image a target cell of the wanted mix, per prompt (a batch of several prompts could otherwise balance
   male doctors against female nurses): `assign_targets` over the joint cells of the mix's attributes (their
   product distribution, so gender x skin is balanced too): exact counts by largest remainder, confident images keep
   their predicted cell while it has seats, the rest are placed by an optimal assignment on -log probability
   (`scipy.optimize.linear_sum_assignment`; Shen et al. solve the same transport problem with POT, averaged over
   random target counts; exact counts make it one deterministic assignment).
3. Distributional alignment loss: cross-entropy of the classifier on the generated images against the assigned
   targets, for images whose top probability on that attribute passes `min_confidence` (Shen et al. drop images
   whose target is uncertain; an image the classifier cannot read at all is no face to move).
4. Gradients: adjusted direct fine-tuning at the recorded steps. At each gradient step k the UNet is run again,
   with gradients, on the recorded input x_k, and its prediction of the clean sample x0_k (from x_k, the output and
   the noise schedule: v-, epsilon- or sample-prediction) stands in for the final image with a straight-through
   estimator: image = final.detach() + sum_k (x0_k - x0_k.detach()). The loss's gradient at the final image so
   reaches every chosen step with weight 1, as if each step predicted the image directly; this is Shen et al.'s
   adjusted DFT (their coefficients make every step's gradient equally strong and cut the chain of Jacobians
   through the UNet inputs), written for a data-prediction solver like DPM-Solver++, where x0_k is what the step
   passes on. Only the recorded steps cost a backward pass. On SD / SDXL x0_k is a latent and is decoded by the
   (frozen) VAE, with gradients, before the classifier.
5. Preservation: MSE between x0_k and the frozen model's x0 prediction at the same x_k (the same noise, prompt and
   step; pixels on the bundled model, latents on SD / SDXL), weighted 1 for images that keep their predicted cell
   and `changed_weight` for re-assigned ones (Shen et al. weight their image-semantics loss down the same way for
   images whose target differs from the original).

Which steps get gradients matters physically on the bundled model: a face's skin colour is decided at high noise
(t ~ 860-935 of 1000, `fairdiff.world.train_model.sample_timesteps`), gender and hair later, so gradients only
through the last, low-noise steps cannot move skin. `grad_steps` picks the steps as fractions of the chain
(0 = the first, noisiest step; 1 = the last); each optimizer step uses `grad_per_step` of them, chosen from
(cfg.seed, step).

Method options (`MitigateConfig.method_options`; defaults in `AlignOptions`):

- `prompts_per_step` (2): prompts per optimizer step; the batch is split evenly between them.
- `guidance` (None): classifier-free guidance of the training draws; None = the pipeline's default.
- `grad_steps` ("all"): "all", or a list of fractions in [0, 1] of the chain whose steps may get gradients.
- `grad_per_step` (2): how many of those steps get gradients in one optimizer step.
- `keep_confidence` (0.9): an image keeps its predicted cell when every mixed attribute's top probability is at
  least this (and the cell has seats left).
- `min_confidence` (0.3): the alignment loss skips an attribute of an image whose top probability is below this.
- `preserve_weight` (1.0) and `changed_weight` (0.1): weight of the preservation loss, and its per-image factor
  for re-assigned images.

Written by hand: the assignment is a few lines around scipy's solver, and no library draws, classifies and
back-propagates through a diffusers pipeline's chosen steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.mitigate.training import TrainContext, register_method
from fairdiff.mix import joint_cells, largest_remainder

CLASSIFIER_SIZE = 32  # the world classifier reads (B, 3, 32, 32) in [-1, 1]


@dataclass
class AlignOptions:
    """The method options of `align` (see the module docstring)."""

    prompts_per_step: int = 2
    guidance: float | None = None
    grad_steps: str | list[float] = "all"
    grad_per_step: int = 2
    keep_confidence: float = 0.9
    min_confidence: float = 0.3
    preserve_weight: float = 1.0
    changed_weight: float = 0.1

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AlignOptions:
        """Options from `method_options`; an unknown key or a bad value is one FairdiffError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise FairdiffError(
                f"--method align: unknown method option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        opts = cls(**dict(options))
        for name in ("prompts_per_step", "grad_per_step"):
            value = getattr(opts, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FairdiffError(f"--method align: method option {name} must be a whole number >= 1, got {value!r}")
        for name in ("keep_confidence", "min_confidence", "preserve_weight", "changed_weight"):
            value = getattr(opts, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise FairdiffError(f"--method align: method option {name} must be a number >= 0, got {value!r}")
        g = opts.guidance
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0):
            raise FairdiffError(f"--method align: method option guidance must be a number >= 0 or null, got {g!r}")
        steps = opts.grad_steps
        if steps != "all" and (
            not isinstance(steps, list | tuple)
            or not steps
            or any(isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 1 for s in steps)
        ):
            raise FairdiffError(
                "--method align: method option grad_steps must be 'all' or a list of fractions in [0, 1], "
                f"got {steps!r}"
            )
        return opts


@dataclass
class Assignment:
    """Targets for one group of images: per attribute the class index of each image, and which images moved."""

    targets: dict[str, np.ndarray]  # attribute -> (n,) class indices (the classifier's head order)
    reassigned: np.ndarray  # bool (n,): the target cell differs from the predicted one
    kept: np.ndarray  # bool (n,): kept its predicted cell in the confident phase


def assign_targets(
    probs: Mapping[str, np.ndarray],
    mix: Mapping[str, Mapping[str, float]],
    classes: Mapping[str, Sequence[str]],
    keep_confidence: float = 0.9,
) -> Assignment:
    """Target cells for n images so they match `mix` exactly.

    `probs`: {attribute: (n, K) classifier probabilities} for at least the mix's attributes; `classes`: the class
    names of each head in order. The cells are the joint cells of the mix (product of its marginals, zero cells
    left out), their counts `largest_remainder` of the cell probabilities. Images whose every mixed attribute has a
    top probability >= `keep_confidence` keep their predicted cell, most confident first, while it has seats; the
    rest fill the remaining seats by a minimum-cost assignment on sum_a -log p_a(cell value)."""
    from scipy.optimize import linear_sum_assignment

    attributes = list(mix)
    n = len(next(iter(probs.values())))
    cells = joint_cells(mix)
    index = {a: {v: i for i, v in enumerate(classes[a])} for a in attributes}
    cell_idx = np.array([[index[a][cell[a]] for a in attributes] for cell, _ in cells], dtype=np.int64)  # (C, A)
    seats = np.array(largest_remainder([p for _, p in cells], n), dtype=np.int64)
    logp = [np.log(np.clip(np.asarray(probs[a], dtype=np.float64), 1e-12, 1.0)) for a in attributes]
    cost = -sum(logp[j][:, cell_idx[:, j]] for j in range(len(attributes)))  # (n, C)
    pred = np.stack([np.asarray(probs[a]).argmax(1) for a in attributes], axis=1)  # (n, A)
    conf = np.stack([np.asarray(probs[a]).max(1) for a in attributes], axis=1).min(1)  # (n,)
    pred_cell = np.array([_cell_of(row, cell_idx) for row in pred], dtype=np.int64)  # -1: a zero-probability cell

    target = np.full(n, -1, dtype=np.int64)
    left = seats.copy()
    for i in sorted(range(n), key=lambda i: (-conf[i], i)):
        c = pred_cell[i]
        if conf[i] >= keep_confidence and c >= 0 and left[c] > 0:
            target[i] = c
            left[c] -= 1
    kept = target >= 0
    rest = np.flatnonzero(~kept)
    if len(rest):
        slots = np.repeat(np.arange(len(cells)), left)  # one column per free seat
        rows, cols = linear_sum_assignment(cost[rest][:, slots])
        target[rest[rows]] = slots[cols]
    targets = {a: cell_idx[target, j] for j, a in enumerate(attributes)}
    return Assignment(targets=targets, reassigned=target != pred_cell, kept=kept)


def _cell_of(row: np.ndarray, cell_idx: np.ndarray) -> int:
    hit = np.flatnonzero((cell_idx == row).all(1))
    return int(hit[0]) if len(hit) else -1


def chosen_steps(opts: AlignOptions, n_steps: int, rng: np.random.Generator) -> list[int]:
    """The denoising step indices that get gradients in one optimizer step (sorted, distinct)."""
    if opts.grad_steps == "all":
        pool = list(range(n_steps))
    else:
        pool = sorted({min(n_steps - 1, int(round(f * (n_steps - 1)))) for f in opts.grad_steps})
    k = min(opts.grad_per_step, len(pool))
    return sorted(int(s) for s in rng.choice(pool, size=k, replace=False))


def predicted_x0(scheduler, sample, timestep, output):
    """The clean sample a UNet output predicts from its input `sample` (the variance-preserving x_t every diffusers
    scheduler feeds the UNet) at `timestep`, for v-, epsilon- and sample-prediction."""
    import torch

    t = int(round(float(timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else timestep)))
    table = scheduler.alphas_cumprod.to(device=sample.device, dtype=torch.float32)
    abar = table[min(max(t, 0), len(table) - 1)]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    kind = scheduler.config.get("prediction_type", "epsilon")
    sample, output = sample.float(), output.float()
    if kind == "v_prediction":
        return alpha * sample - sigma * output
    if kind == "epsilon":
        return (sample - sigma * output) / alpha
    if kind == "sample":
        return output
    raise FairdiffError(f"--method align: scheduler prediction_type {kind!r} is not supported")


@register_method("align")
class AlignMethod:
    """Distributional alignment (Shen et al. 2024) with adjusted direct fine-tuning at chosen steps; see the
    module docstring for the algorithm and `AlignOptions` for `method_options`."""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.opts = AlignOptions.from_options(ctx.cfg.method_options)
        pipe = ctx.loaded.pipeline
        if getattr(pipe, "unet", None) is None:
            raise FairdiffError(f"--method align: model {ctx.loaded.name!r} has no UNet to train")
        if ctx.classifier is None:
            raise FairdiffError(
                "--method align needs a differentiable classifier of the mixed attributes (the world classifier, "
                "fairdiff.world.classifier.load_classifier) and this run has none; give one, or use "
                "--method balanced, which needs no classifier"
            )
        if not ctx.mix:
            raise FairdiffError("--method align: the run has no mix to align to (e.g. --mix gender=uniform)")
        if not ctx.prompts:
            raise FairdiffError("--method align: the training suite has no prompts")
        if self.cfg.batch_size % self.opts.prompts_per_step:
            raise FairdiffError(
                f"--method align: batch size {self.cfg.batch_size} does not split evenly over "
                f"prompts_per_step {self.opts.prompts_per_step}"
            )
        from fairdiff.world.schema import ATTRIBUTES

        heads = getattr(ctx.classifier, "heads", None)
        self.classes = {a: list(ATTRIBUTES[a]) for a in ATTRIBUTES if heads is None or a in heads}
        missing = sorted(set(ctx.mix) - set(self.classes))
        if missing:
            raise FairdiffError(f"--method align: the classifier has no head for mixed attribute(s) {missing}")
        ctx.classifier.eval().requires_grad_(False)
        self.latent = ctx.loaded.kind != "tiny"  # SD / SDXL: x0 is a latent, decoded by the VAE

    # -- one optimizer step -------------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[list[str], list[int], list[int]]:
        """(prompt of each image, seed of each image, gradient steps) of optimizer step `step`."""
        rng = np.random.default_rng([int(self.cfg.seed), int(step), 0xA11])
        per = self.cfg.batch_size // self.opts.prompts_per_step
        enough = len(self.ctx.prompts) >= self.opts.prompts_per_step  # else prompts repeat within a step
        chosen = rng.choice(len(self.ctx.prompts), size=self.opts.prompts_per_step, replace=not enough)
        prompts = [self.ctx.prompts[int(j)] for j in chosen for _ in range(per)]
        seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=len(prompts))]
        grad = chosen_steps(self.opts, self.cfg.sample_steps, rng)
        return prompts, seeds, grad

    def loss(self, step: int):
        """The loss of optimizer step `step` and its stats (shares, loss parts, share re-assigned)."""
        import torch
        import torch.nn.functional as F

        from fairdiff.models.precision import sampling_autocast
        from fairdiff.models.sampling import ImageOptions, SamplingRequest, draw

        prompts, seeds, grad_steps = self.batch(step)
        pipe, unet = self.ctx.loaded.pipeline, self.ctx.loaded.pipeline.unet
        records: dict[int, dict[str, Any]] = {}

        def hook(sc) -> None:
            if sc.step in grad_steps:
                records[sc.step] = {
                    "sample": sc.sample.detach().clone(),
                    "timestep": sc.timestep.detach().clone() if isinstance(sc.timestep, torch.Tensor) else sc.timestep,
                    "states": sc.encoder_hidden_states.detach().clone(),
                    "kwargs": _detached(sc.unet_kwargs),
                    "cfg": sc.cfg,
                    "guidance": sc.guidance.clone(),
                }
            return None

        request = SamplingRequest(
            images=[ImageOptions(p, "", s, self.opts.guidance) for p, s in zip(prompts, seeds, strict=True)],
            steps=self.cfg.sample_steps,
            step_hook=hook,
            autocast=self.cfg.autocast,
        )
        images = draw(self.ctx.loaded, request)  # (B, H, W, 3) uint8, the current model, no gradients
        if set(records) != set(grad_steps):
            raise FairdiffError(
                f"--method align: the pipeline made {len(records)} of the expected UNet calls at steps {grad_steps} "
                f"(a scheduler with several UNet calls per step is not supported)"
            )
        device = unet.device
        final = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        n = len(prompts)

        # x0 predictions with gradients at the chosen steps, and the frozen model's at the same inputs
        x0s, frozen_x0s = [], []
        text_trainable = self._text_trainable()
        for k in grad_steps:
            rec = records[k]
            states = self._encode(prompts, rec) if text_trainable else rec["states"]
            kwargs = dict(rec["kwargs"])
            if text_trainable and "added_cond_kwargs" in kwargs and hasattr(self, "_pooled"):
                kwargs["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], "text_embeds": self._pooled}
            with sampling_autocast(device, unet.dtype, self.cfg.autocast):
                raw = unet(rec["sample"], rec["timestep"], encoder_hidden_states=states, **kwargs, return_dict=False)[0]
            x0s.append(self._x0(pipe, rec, raw))
            with torch.no_grad(), self.ctx.frozen_model(), sampling_autocast(device, unet.dtype, self.cfg.autocast):
                raw_f = unet(rec["sample"], rec["timestep"], encoder_hidden_states=rec["states"], **rec["kwargs"])
                frozen_x0s.append(self._x0(pipe, rec, raw_f[0] if isinstance(raw_f, tuple) else raw_f.sample))

        pixels = [self._decode(pipe, x0) for x0 in x0s]
        surrogate = final + sum(p - p.detach() for p in pixels)
        if surrogate.shape[-2:] != (CLASSIFIER_SIZE, CLASSIFIER_SIZE):
            surrogate = F.interpolate(surrogate, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="area")
        logits = self.ctx.classifier(surrogate.float())

        # targets per prompt group, from the classifier's reading of the final images
        probs = {a: logits[a].detach().float().softmax(-1).cpu().numpy() for a in self.ctx.mix}
        targets = {a: np.zeros(n, dtype=np.int64) for a in self.ctx.mix}
        reassigned = np.zeros(n, dtype=bool)
        per = n // self.opts.prompts_per_step
        for g in range(self.opts.prompts_per_step):
            sl = slice(g * per, (g + 1) * per)
            got = assign_targets(
                {a: p[sl] for a, p in probs.items()}, self.ctx.mix, self.classes, self.opts.keep_confidence
            )
            for a in targets:
                targets[a][sl] = got.targets[a]
            reassigned[sl] = got.reassigned

        align = logits[next(iter(self.ctx.mix))].new_zeros(())
        used = 0
        for a in self.ctx.mix:
            mask = torch.from_numpy(probs[a].max(1) >= self.opts.min_confidence).to(device)
            ce = F.cross_entropy(logits[a].float(), torch.from_numpy(targets[a]).to(device), reduction="none")
            align = align + (ce * mask).sum() / n
            used += int(mask.sum())
        weights = torch.where(torch.from_numpy(reassigned).to(device), self.opts.changed_weight, 1.0)
        preserve = sum(
            (((x0 - f.float()) ** 2).flatten(1).mean(1) * weights).mean() for x0, f in zip(x0s, frozen_x0s, strict=True)
        ) / len(x0s)
        loss = align + self.opts.preserve_weight * preserve

        stats: dict[str, float] = {
            "loss_align": float(align.detach()),
            "loss_preserve": float(preserve.detach()),
            "reassigned": float(reassigned.mean()),
            "loss_terms_used": used / (n * len(self.ctx.mix)),
        }
        for a in self.ctx.mix:
            counts = np.bincount(probs[a].argmax(1), minlength=len(self.classes[a]))
            for v, c in zip(self.classes[a], counts, strict=True):
                stats[f"share_{a}_{v}"] = float(c / n)
        return loss, stats

    # -- helpers --------------------------------------------------------------------------------------------------
    def _text_trainable(self) -> bool:
        if self.ctx.trainable is not None:
            return self.ctx.text_trained
        pipe = self.ctx.loaded.pipeline
        encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")]
        return any(p.requires_grad for e in encoders if e is not None for p in e.parameters())

    def _encode(self, prompts: list[str], rec: dict[str, Any]):
        """Prompt embeddings with gradients (a trainable text encoder), laid out as the pipeline passes them
        ([negative; prompt] under guidance); SDXL's pooled embeddings go to `self._pooled`. Through the loop's
        `ctx.condition` where the context has one."""
        import torch

        pipe, loaded = self.ctx.loaded.pipeline, self.ctx.loaded
        negatives = [""] * len(prompts)
        if self.ctx.conditioner is not None:
            parts = [self.ctx.condition(negatives), self.ctx.condition(prompts)] if rec["cfg"] else None
            parts = parts or [self.ctx.condition(prompts)]
            if loaded.kind == "sdxl":
                self._pooled = torch.cat([p["added_cond_kwargs"]["text_embeds"] for p in parts])
            return torch.cat([p["encoder_hidden_states"] for p in parts])
        if loaded.kind == "tiny":
            cond = pipe.encode_prompt(prompts)
            return torch.cat([pipe.encode_prompt(negatives), cond]) if rec["cfg"] else cond
        device = pipe.unet.device
        if loaded.kind == "sdxl":
            pos, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompts,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=rec["cfg"],
                negative_prompt=negatives,
            )
            self._pooled = torch.cat([neg_pooled, pooled]) if rec["cfg"] else pooled
        else:
            pos, neg = pipe.encode_prompt(prompts, device, 1, rec["cfg"], negative_prompt=negatives)
        return torch.cat([neg, pos]) if rec["cfg"] else pos

    def _x0(self, pipe, rec: dict[str, Any], raw):
        """The guided x0 prediction of one recorded step from the UNet's raw output (both CFG halves)."""
        sample = rec["sample"]
        if rec["cfg"]:
            uncond, cond = raw.float().chunk(2)
            g = rec["guidance"].to(device=raw.device, dtype=uncond.dtype).view(-1, *([1] * (uncond.dim() - 1)))
            guided = uncond + g * (cond - uncond)
            sample = sample.chunk(2)[1]
        else:
            guided = raw
        return predicted_x0(pipe.scheduler, sample, rec["timestep"], guided)

    def _decode(self, pipe, x0):
        """Pixels in [-1, 1] (B, 3, H, W) of an x0 prediction: itself on the bundled model, the VAE's decode on SD."""
        if not self.latent:
            return x0
        vae = pipe.vae
        return vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0].float().clamp(-1, 1)


def _detached(value):
    """A copy of the hook's UNet kwargs with every tensor detached and cloned (dicts walked)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value
