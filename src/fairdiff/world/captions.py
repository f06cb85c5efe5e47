"""Sample the biased world: attributes from P(. | occupation, context), then a caption that may name some of them.

Each attribute is named with a fixed probability, independent of its value, so the images behind a neutral
caption ("a photo of the face of a doctor") carry exactly the config's P(attributes | doctor, photo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairdiff.world.config import WorldConfig
from fairdiff.world.schema import (
    ATTIRE_WORDS,
    ATTRIBUTES,
    DEMOGRAPHIC_ATTRIBUTES,
    OCCUPATION_WORDS,
    SKIN_WORDS,
    Portrait,
)


@dataclass(frozen=True)
class WorldSample:
    """One training example: ground truth, the context it was drawn in, its caption and its render seed."""

    portrait: Portrait
    context: str
    caption: str
    seed: int


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe(
    *,
    occupation: str | None = None,
    gender: str | None = None,
    skin: str | None = None,
    age: str | None = None,
    attire: str | None = None,
    occupation_word: str | None = None,
) -> str:
    """The subject phrase, e.g. describe(skin="dark", age="old", gender="woman", occupation="doctor") ->
    "dark-skinned old woman doctor". Unnamed attributes are left out; no occupation and no gender -> "person"."""
    words = []
    if skin:
        words.append(SKIN_WORDS[skin])
    if age:
        words.append(age)
    if gender:
        words.append(gender)
    if occupation or occupation_word:
        words.append(occupation_word or OCCUPATION_WORDS[occupation])
    elif not gender:
        words.append("person")
    phrase = " ".join(words)
    if attire:
        phrase += " " + ATTIRE_WORDS[attire]
    return phrase


def fill_template(template: str, subject: str) -> str:
    """Put `subject` into a template and fix the article in front of it ("a {subject}" + "old man" -> "an old man")."""
    before, after = template.split("{subject}")
    for art in ("a ", "an "):
        if before.endswith(art) and (len(before) == len(art) or before[-len(art) - 1] == " "):
            before = before[: -len(art)] + article(subject) + " "
            break
    return before + subject + after


def _choice(rng: np.random.Generator, dist: dict[str, float]) -> str:
    """One value drawn from `dist`. A config may sum to 1 within 1e-6 (0.3333333 + 0.6666666), further off than
    numpy's sampler allows, so the probabilities are divided by their sum: a no-op (bit for bit) where they sum
    to exactly 1.0, as every distribution of the default world does."""
    values = list(dist)
    p = np.array([dist[v] for v in values], dtype=np.float64)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def sample_world(config: WorldConfig, n: int, seed: int) -> list[WorldSample]:
    """Draw `n` examples; the same (config, n, seed) always gives the same list, and a prefix of a longer draw."""
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}.")
    rng = np.random.default_rng(seed)
    contexts = list(config.contexts.values())
    weights = np.array([c.weight for c in contexts])
    weights = weights / weights.sum()
    occupations = list(config.occupations)
    samples = []
    for _ in range(n):
        ctx = contexts[int(rng.choice(len(contexts), p=weights))]
        occ = occupations[int(rng.integers(len(occupations)))]
        attrs = {a: _choice(rng, config.occupations[occ].probs[a]) for a in DEMOGRAPHIC_ATTRIBUTES}
        attrs["occupation"] = occ
        attrs["attire"] = "revealing" if rng.random() < config.p_revealing(ctx.name, attrs) else "covered"
        named = {a: attrs[a] for a in config.name_probability if rng.random() < config.name_probability[a]}
        show_occ = rng.random() < ctx.occupation_in_caption
        template = ctx.templates[int(rng.integers(len(ctx.templates)))]
        subject = describe(occupation=occ if show_occ else None, **named)
        samples.append(
            WorldSample(
                portrait=Portrait(**attrs),
                context=ctx.name,
                caption=fill_template(template, subject),
                seed=int(rng.integers(2**31 - 1)),
            )
        )
    return samples


def attribute_vocabulary() -> dict[str, list[str]]:
    """Every value of every attribute, for checks that a config or suite stays inside the world's words."""
    return {a: list(v) for a, v in ATTRIBUTES.items()}
