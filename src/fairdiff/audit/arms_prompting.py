"""Arm kinds that act through the prompt and the sampler (registered on import of fairdiff.audit):

- `quota`: image i of a prompt gets stated attributes, so the images of each prompt match the wanted mix
  exactly: {kind: quota, name: q, mix: [gender=uniform, skin=uniform], words: {gender: {woman: female}}, block: null}
- `guidance`: Fair Diffusion (Friedrich et al. 2023): SEGA semantic guidance (`fairdiff.mitigate.guidance`) toward
  the attribute value chosen for image i, away from the attribute's other values:
  {kind: guidance, name: fd, mix: [gender=uniform], scale: 4, warmup: 5, threshold: 0.9, momentum: 0.3, beta: 0.6}

Which value image i gets (both arms): `fairdiff.mix.quota_assignments` over the joint cells of the mix, i.e. the
largest-deficit sequence by image index (deterministic; every prefix within one image of its quota, exact in
every block of n images where the n p are whole numbers: a uniform mix over K cells in every K images). With
`block: N`, image i takes place i mod N of a block whose counts are Hamilton's largest-remainder counts for N
images, exact in every block of N whatever the mix.

Attributes a prompt already states ("a female doctor", "a dark-skinned nurse", "a photo of a Black woman") are left
as written: the arm adds (quota) or steers (guidance) only the others. Words are inserted the way the world's
captions name attributes, which is what the bundled model was trained on: before the person noun (an occupation of
the world, "person", "woman", ... or else the word after the last article), in the captions' order skin, age,
gender, with the article fixed: "a photo of the face of a doctor" -> "a photo of the face of a dark-skinned woman
doctor". `words` changes the words per value for other models ({gender: {man: male, woman: female}}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from fairdiff.audit.arm_specs import ArmName, ArmSpecModel, register_arm_spec
from fairdiff.audit.arms import Arm, register_arm
from fairdiff.config import ConfigValueError, Expected
from fairdiff.errors import FairdiffError
from fairdiff.mix import Mix, cell_sequence, joint_cells, largest_remainder, parse_mix, quota_assignments
from fairdiff.models.sampling import ImageOptions
from fairdiff.world.schema import ATTRIBUTES, DEMOGRAPHIC_ATTRIBUTES, OCCUPATION_WORDS, SKIN_WORDS

#: the attributes a prompt can state, with their classes (the world's, which the CLIP detector shares)
PROMPT_CLASSES: dict[str, tuple[str, ...]] = {a: ATTRIBUTES[a] for a in DEMOGRAPHIC_ATTRIBUTES}
#: the words the world's captions use for each value (world/captions.py `describe`)
WORLD_WORDS: dict[str, dict[str, str]] = {
    "gender": {g: g for g in ATTRIBUTES["gender"]},
    "skin": dict(SKIN_WORDS),
    "age": {a: a for a in ATTRIBUTES["age"]},
}
#: the order captions put attribute words in before the noun ("dark-skinned old woman doctor")
WORD_ORDER: tuple[str, ...] = ("skin", "age", "gender")
#: words that state an attribute (besides the arm's own words): a prompt with one keeps that attribute as written
STATED_WORDS: dict[str, tuple[str, ...]] = {
    "gender": (
        "man", "men", "woman", "women", "male", "female", "boy", "boys", "girl", "girls", "lady", "ladies",
        "gentleman", "gentlemen", "guy", "masculine", "feminine", "mother", "father", "businessman",
        "businesswoman",
    ),
    "skin": (
        r"[\w-]+[- ]skinned", "skin", "complexion", "white", "black", "asian", "east asian", "south asian",
        "latino", "latina", "latinx", "hispanic", "caucasian", "african", "middle eastern", "indian",
    ),
    "age": ("young", "old", "elderly", "aged", "senior", "teenage", "teenager", "child", "middle-aged", "youthful"),
}  # fmt: skip
PERSON_NOUNS: tuple[str, ...] = ("person", "people", "man", "woman", "men", "women", "human", "individual", "adult")
#: the guidance arm's default edit prompts fill this with the world's words (the template of the world's gates)
CONCEPT_TEMPLATE = "a photo of the face of a {subject}"
_ARTICLE = re.compile(r"^(a|an)$", re.IGNORECASE)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@cache
def _person_nouns() -> frozenset[str]:
    from fairdiff.world.config import load_world_config

    world = load_world_config()
    words = {*PERSON_NOUNS, *(w.lower() for w in OCCUPATION_WORDS.values())}
    for spec in world.occupations.values():
        words |= {p.lower() for p in spec.paraphrases}
    return frozenset(words)


def stated_patterns(words: Mapping[str, Mapping[str, str]]) -> dict[str, re.Pattern]:
    """attribute -> a regex that finds a word stating it (STATED_WORDS plus the arm's own words)."""
    out = {}
    for attribute in PROMPT_CLASSES:
        alternatives = [*STATED_WORDS[attribute], *(re.escape(w) for w in words.get(attribute, {}).values())]
        alternatives.sort(key=len, reverse=True)
        out[attribute] = re.compile(r"(?<![\w-])(?:" + "|".join(alternatives) + r")(?![\w-])", re.IGNORECASE)
    return out


def stated_attributes(prompt: str, patterns: Mapping[str, re.Pattern]) -> set[str]:
    """The attributes `prompt` states already."""
    return {a for a, pattern in patterns.items() if pattern.search(prompt)}


def state_attributes(
    prompt: str, values: Mapping[str, str], words: Mapping[str, Mapping[str, str]], patterns: Mapping[str, re.Pattern]
) -> str:
    """`prompt` with the words of `values` ({attribute: value}) put before its person noun, for attributes it does
    not state yet, in the captions' order and with its article fixed."""
    stated = stated_attributes(prompt, patterns)
    new = [(a, words[a][v]) for a, v in values.items() if a not in stated]
    if not new:
        return prompt
    tokens = prompt.split(" ")
    bare = [t.strip(",.;:!?()\"'").lower() for t in tokens]
    nouns = _person_nouns()
    head = next((i for i, t in enumerate(bare) if t in nouns), None)
    if head is None:  # the word after the last article, else the first word
        articles = [i for i, t in enumerate(bare) if _ARTICLE.match(t) and i + 1 < len(tokens)]
        head = articles[-1] + 1 if articles else 0
    start = head  # attribute words already in front of the noun join the new ones, in the captions' order
    while start > 0 and any(patterns[a].fullmatch(bare[start - 1]) for a in patterns):
        start -= 1
    run = [(next(a for a in patterns if patterns[a].fullmatch(bare[k])), tokens[k]) for k in range(start, head)]
    order = {a: k for k, a in enumerate(WORD_ORDER)}
    run = sorted(run + new, key=lambda aw: order.get(aw[0], len(order)))
    words_in = [w for _, w in run]
    if start > 0 and _ARTICLE.match(bare[start - 1]):
        old = tokens[start - 1]
        fixed = _article(words_in[0])
        tokens[start - 1] = fixed.capitalize() if old[:1].isupper() else fixed
    return " ".join([*tokens[:start], *words_in, *tokens[head:]])


# ------------------------------------------------------------------------------------------------- the plan


def mix_of(items: Sequence[str]) -> Mix:
    """The mix of `mix:` items over the prompt attributes (gender, skin, age)."""
    return parse_mix(list(items), PROMPT_CLASSES)


class Assignments:
    """The attribute values of images 0, 1, 2, ... of a prompt under `mix` (see the module docstring): the quota
    sequence over the joint cells (`fairdiff.mix.quota_assignments`), or with `block` N, place i mod N of a block
    holding the largest-remainder counts for N images. Computed once and extended as needed (a sequence for n
    images is the prefix of the one for more)."""

    def __init__(self, mix: Mix, block: int | None = None) -> None:
        self.mix, self.block = mix, block
        self._seq: list[dict[str, str]] = []
        if block is not None:
            cells = joint_cells(mix)
            counts = largest_remainder([p for _, p in cells], block)
            weighted = [(values, count) for (values, _), count in zip(cells, counts, strict=True)]
            self._seq = [dict(cells[k][0]) for k in cell_sequence(weighted, block)]

    def __call__(self, index: int) -> dict[str, str]:
        if self.block is not None:
            return dict(self._seq[index % self.block])
        if index >= len(self._seq):
            self._seq = quota_assignments(self.mix, max(index + 1, 2 * len(self._seq), 16))
        return dict(self._seq[index])


def resolved_words(mix: Mix, words: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    """The words of every value of the mix's attributes: the world's, replaced where `words` gives one."""
    given = words or {}
    return {a: {v: given.get(a, {}).get(v, WORLD_WORDS[a][v]) for v in PROMPT_CLASSES[a]} for a in mix}


# -------------------------------------------------------------------------------------------------- specs


def _mix_items(items: list[str]) -> list[str]:
    if not items:
        raise ConfigValueError("needs at least one ATTRIBUTE=uniform | VALUE:WEIGHT,... item")
    try:
        mix_of(items)
    except FairdiffError as exc:
        raise ConfigValueError(str(exc).removeprefix("--")) from None
    return items


MixItems = Annotated[
    list[Annotated[str, Expected("ATTRIBUTE=uniform or ATTRIBUTE=VALUE:WEIGHT,...")]],
    Expected("a list of ATTRIBUTE=uniform | ATTRIBUTE=VALUE:WEIGHT,... items"),
    AfterValidator(_mix_items),
]
Block = Annotated[int, Expected("a whole number of images >= 1"), Field(ge=1, le=1_000_000)]


def _words(words: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    for attribute, by_value in words.items():
        if attribute not in PROMPT_CLASSES:
            raise ConfigValueError(f"unknown attribute {attribute!r}; choose from: {', '.join(PROMPT_CLASSES)}")
        for value, word in by_value.items():
            if value not in PROMPT_CLASSES[attribute]:
                allowed = ", ".join(PROMPT_CLASSES[attribute])
                raise ConfigValueError(f"unknown {attribute} value {value!r}; choose from: {allowed}", attribute)
            if not word.strip() or word != word.strip():
                raise ConfigValueError(f"expected a word without leading/trailing spaces, got {word!r}", attribute)
    return words


Words = Annotated[
    dict[str, dict[str, str]],
    Expected("a mapping {attribute: {value: word}}"),
    AfterValidator(_words),
]


class _MixSpec(ArmSpecModel):
    mix: MixItems
    words: Words | None = None
    block: Block | None = None


@register_arm_spec("quota")
class QuotaArmSpec(_MixSpec):
    """Stated attributes per image, so each prompt's images match the mix exactly."""

    kind: Literal["quota"] = "quota"
    name: ArmName = "quota"


Unit = Annotated[float, Expected("a number in [0, 1)"), Field(ge=0, lt=1)]
NonNegative = Annotated[float, Expected("a number >= 0"), Field(ge=0)]
Steps = Annotated[int, Expected("a whole number of steps >= 0"), Field(ge=0)]


@register_arm_spec("guidance")
class GuidanceArmSpec(_MixSpec):
    """Fair Diffusion: SEGA toward the value chosen per image (edit prompts: `concepts`, default the world's)."""

    kind: Literal["guidance"] = "guidance"
    name: ArmName = "guidance"
    concepts: Words | None = None  # {attribute: {value: edit prompt}}
    away: Annotated[Literal["binary", "all", "none"], Expected("one of binary, all, none")] = "binary"
    scale: NonNegative = 4.0
    warmup: Steps = 5
    threshold: Unit = 0.9
    momentum: NonNegative = 0.3
    beta: Unit = 0.6
    cooldown: Steps | None = None


# --------------------------------------------------------------------------------------------------- arms


@register_arm("quota")
@dataclass
class QuotaArm(Arm):
    """Image i of a prompt gets the attributes `Assignments(mix, block)(i)` stated in its prompt (those the prompt
    does not state already)."""

    name: str = "quota"
    mix: list[str] = field(default_factory=list)
    words: dict[str, dict[str, str]] | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        self._mix = mix_of(self.mix) if self.mix else {}
        self._words = resolved_words(self._mix, self.words)
        self._patterns = stated_patterns(self._words)
        self._assign = Assignments(self._mix, self.block)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "mix": list(self.mix), "words": self._words, "block": self.block}

    def values_for(self, index: int) -> dict[str, str]:
        """The attribute values image `index` of a prompt is given."""
        return self._assign(index)

    def image_options(self, prompt: str, negative: str, index: int, seed: int) -> ImageOptions:
        opts = super().image_options(prompt, negative, index, seed)
        text = state_attributes(opts.prompt, self.values_for(index), self._words, self._patterns)
        return replace(opts, prompt=text)


def world_concepts(mix: Mix) -> dict[str, dict[str, str]]:
    """Edit prompts in the world's caption form: "a photo of the face of a woman", "... of a dark-skinned person"."""
    from fairdiff.world.captions import describe, fill_template

    return {a: {v: fill_template(CONCEPT_TEMPLATE, describe(**{a: v})) for v in PROMPT_CLASSES[a]} for a in mix}


@register_arm("guidance")
@dataclass
class GuidanceArm(QuotaArm):
    """Fair Diffusion: image i is steered by SEGA toward `concepts[a][v]` for each attribute a the prompt does not
    state, v = `Assignments(mix, block)(i)[a]` (the quota sequence), and away from the other values' concepts
    (weights 1/(K-1), so away weighs as much as toward) for two-valued attributes (`away: binary`, Fair Diffusion's
    pair "toward woman, away from man"), every attribute (`all`) or none. Away from every other skin tone pushes a
    middle tone toward the far end as much as away from it (measured: medium was never drawn with `all`, every
    time with `none`), so ordered many-valued attributes are steered toward only. The prompt is not changed."""

    name: str = "guidance"
    concepts: dict[str, dict[str, str]] | None = None
    away: str = "binary"  # steer away from the other values: for two-valued attributes, all, or none
    scale: float = 4.0
    warmup: int = 5
    threshold: float = 0.9
    momentum: float = 0.3
    beta: float = 0.6
    cooldown: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        base = world_concepts(self._mix)
        given = self.concepts or {}
        self._concepts = {a: {v: given.get(a, {}).get(v, base[a][v]) for v in base[a]} for a in base}
        self._guidance: dict[int, Any] = {}

    def params(self):
        from fairdiff.mitigate.guidance import SegaParams

        return SegaParams(self.scale, self.warmup, self.threshold, self.momentum, self.beta, self.cooldown)

    def spec(self) -> dict[str, Any]:
        out = {**super().spec(), "concepts": self._concepts, "away": self.away}
        return {**out, **{k: v for k, v in self.params().as_dict().items()}}

    def image_options(self, prompt: str, negative: str, index: int, seed: int) -> ImageOptions:
        return Arm.image_options(self, prompt, negative, index, seed)

    def batch_key(self, run_guidance: float | None) -> tuple:
        return ("guidance", self.name, *super().batch_key(run_guidance))  # its own batches: its own hook

    def edits_for(self, prompt: str, index: int) -> list:
        """The edit prompts of image `index` of a suite prompt (as drawn: `-term`s already moved out)."""
        from fairdiff.mitigate.guidance import EditPrompt

        stated = stated_attributes(prompt, self._patterns)
        edits = []
        for attribute, value in self.values_for(index).items():
            if attribute in stated:
                continue
            concepts = self._concepts[attribute]
            edits.append(EditPrompt(concepts[value]))
            others = [v for v in concepts if v != value]
            if others and (self.away == "all" or (self.away == "binary" and len(others) == 1)):
                edits += [EditPrompt(concepts[v], reverse=True, weight=1.0 / len(others)) for v in others]
        return edits

    @contextmanager
    def sampling(self, runtime, jobs: Sequence[Any]):
        from fairdiff.mitigate.guidance import SemanticGuidance

        pipeline = self.model(runtime).pipeline
        guidance = self._guidance.get(id(pipeline))
        if guidance is None or guidance.pipeline is not pipeline:
            guidance = self._guidance[id(pipeline)] = SemanticGuidance(pipeline, self.params())
        yield {"step_hook": guidance.hook([self.edits_for(j.prompt, j.index) for j in jobs])}
