"""`--method balanced`: plain diffusion loss on portrait-world renders drawn with the wanted mix.

Each optimizer step trains on `batch_size` renders. Image i of step s is image g = s * batch_size + i of the run;
it belongs to training prompt g mod P (P prompts, so every prompt gets the same number of images) and is that
prompt's k-th image, k = g div P. Its attributes:

- the mixed ones (gender and skin, uniform, by default): cell k of `fairdiff.mix.quota_assignments` over the mix's
  joint cells, so every prompt's images follow the mix exactly in every block of as many images as there are
  cells (8 for gender x skin), not just on average;
- occupation: the prompt's `occupation` field (its clothing and background in the render);
- the others (age; attire): drawn from the world config (`P(age | occupation)`, `p_revealing` of the prompt's
  context), with a generator seeded by (seed, step), as are the render seeds.

Captions: the neutral training prompt itself ("a photo of the face of a doctor"), so the model learns that the
neutral prompt gives the balanced mix. A share `explicit_share` (default 0.25) of the images is captioned instead
with its mixed attributes named ("a photo of the face of a dark-skinned woman doctor", the world's own words):
those renders are what such a prompt should give anyway, and they keep explicit prompts working while the neutral
ones move (prior preservation). The loss is the pipeline's own: v-prediction on pixels for the bundled model
(as `fairdiff.world.train_model`), the scheduler's prediction type on VAE latents for SD / SDXL (renders resized
to the pipeline's resolution). Everything is a function of (seed, step), so a resumed run equals an uninterrupted
one.

Method options (`MitigateConfig.method_options`): `explicit_share` (0.25), `world` (a world config YAML; default
the bundled world).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.mitigate.training import TrainContext, default_mix, register_method, step_generator
from fairdiff.mix import check_mix, quota_assignments

OPTIONS = ("explicit_share", "world")


def explicit_caption(text: str, occupation: str, attrs: dict[str, str]) -> str | None:
    """`text` with its occupation word replaced by a subject phrase naming `attrs` (None: the word is not in it)."""
    from fairdiff.world.captions import describe, fill_template
    from fairdiff.world.schema import OCCUPATION_WORDS

    word = OCCUPATION_WORDS[occupation]
    if f" {word}" not in f" {text}":
        return None
    at = f" {text}".rindex(f" {word}")
    template = (f" {text}"[:at] + " {subject}" + f" {text}"[at + 1 + len(word) :]).removeprefix(" ")
    named = {a: attrs[a] for a in ("gender", "skin", "age", "attire") if a in attrs}
    return fill_template(template, describe(occupation=occupation, **named))


@register_method("balanced")
class BalancedMethod:
    """Diffusion loss on balanced world renders (see the module docstring)."""

    def __init__(self, ctx: TrainContext) -> None:
        from fairdiff.world.config import load_world_config
        from fairdiff.world.schema import ATTRIBUTES

        self.ctx, self.cfg = ctx, ctx.cfg
        options = dict(ctx.cfg.method_options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise FairdiffError(
                f"--method balanced: unknown method option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}"
            )
        share = options.get("explicit_share", 0.25)
        if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
            raise FairdiffError(f"--method balanced: explicit_share must be a number in [0, 1], got {share!r}")
        if not 0 <= share <= 1:
            raise FairdiffError(f"--method balanced: explicit_share must be in [0, 1], got {share!r}")
        self.explicit_share = float(share)
        self.world = load_world_config(options.get("world"))
        classes = {a: list(v) for a, v in ATTRIBUTES.items() if a != "occupation"}
        self.mix = check_mix(ctx.mix or default_mix(), classes)
        self.prompts = ctx.train_prompts
        for p in self.prompts:
            occupation = p.fields.get("occupation")
            if occupation not in self.world.occupations:
                raise FairdiffError(
                    f"--method balanced: training prompt {p.text!r} has no occupation of the world "
                    f"({', '.join(self.world.occupations)}) in its suite fields; a world suite "
                    "(templates with {occupation}) gives it one"
                )
        self.contexts = [p.context if p.context in self.world.contexts else "photo" for p in self.prompts]
        per_prompt = -(-self.cfg.steps * self.cfg.batch_size // len(self.prompts)) + 1
        self._cells = quota_assignments(self.mix, per_prompt)

    def _cell(self, k: int) -> dict[str, str]:
        if k >= len(self._cells):  # a run extended past its first --steps
            self._cells = quota_assignments(self.mix, 2 * k + 1)
        return self._cells[k]

    def batch(self, step: int) -> tuple[list[Any], list[int], list[str]]:
        """(portraits, render seeds, captions) of optimizer step `step`."""
        from fairdiff.world.schema import Portrait

        rng = np.random.default_rng([int(self.cfg.seed), int(step), 0xBA1])
        n, p = self.cfg.batch_size, len(self.prompts)
        portraits, captions = [], []
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]
        explicit = rng.random(n) < self.explicit_share
        for i in range(n):
            g = step * n + i
            prompt, context = self.prompts[g % p], self.contexts[g % p]
            occupation = prompt.fields["occupation"]
            attrs = dict(self._cell(g // p))
            probs = self.world.occupations[occupation].probs
            for a in ("gender", "skin", "age"):
                if a not in attrs:
                    values = list(probs[a])
                    w = np.array([probs[a][v] for v in values], dtype=np.float64)
                    attrs[a] = values[int(rng.choice(len(values), p=w / w.sum()))]
            attrs["occupation"] = occupation
            if "attire" not in attrs:
                revealing = rng.random() < self.world.p_revealing(context, attrs)
                attrs["attire"] = "revealing" if revealing else "covered"
            portraits.append(Portrait(**attrs))
            named = {a: attrs[a] for a in self.mix}
            caption = explicit_caption(prompt.text, occupation, named) if explicit[i] else None
            captions.append(caption or prompt.text)
        return portraits, seeds, captions

    def loss(self, step: int):
        """Diffusion loss on step `step`'s renders; stats: the batch's shares of the mixed attributes."""
        from fairdiff.mitigate.diffusion import diffusion_loss, to_latents
        from fairdiff.world.render import render_batch

        portraits, seeds, captions = self.batch(step)
        x0 = to_latents(self.ctx.loaded, render_batch(portraits, seeds))
        cond = self.ctx.condition(captions)
        gen = step_generator(self.cfg, step, salt=0xBA1)
        loss = diffusion_loss(self.ctx.loaded.pipeline.unet, self.ctx.scheduler, x0, cond, gen, bf16=self.ctx.bf16)
        stats = {"explicit": sum(c not in {p.text for p in self.prompts} for c in captions) / len(captions)}
        for a, probs in self.mix.items():
            for v in probs:
                stats[f"share_{a}_{v}"] = sum(getattr(p, a) == v for p in portraits) / len(portraits)
        return loss, stats
