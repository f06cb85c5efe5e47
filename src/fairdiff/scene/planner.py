"""The rules planner: a group prompt -> one layout per image, with each person's attributes in exact proportions.

Steps (`plan_rules`; `resolve` does 1-3 and is shared with the LLM planner):

1. Parse the prompt (`parse_prompt`), a small documented grammar:
   - head count: "a team of 5" / "a team of five people" (`of N`), "five nurses" / "3 doctors" (a number word or
     digits before the people; 1-99, "a dozen", "a pair / couple of" = 2, "a trio of" = 3, "a quartet of" = 4);
     one person for a singular "a male nurse"; otherwise none (`people=` / `--people` must give it);
   - stated attributes, never overridden: gender words (woman, women, women's, female, girl, lady, mother,
     sister, nun, queen / man, men, men's, male, boy, father, brother, monk, king ...; both kinds named -> the
     gender is left free), skin-tone words (light-/fair-/medium-/brown-/dark-skinned, "dark skin"), age words
     (young, teenage / old, elderly, senior), attire ("revealing", "modest") and the world's occupations
     ("five nurses" -> occupation nurse);
   - stated contexts that must not be diversified (`STATED_CONTEXTS`): a year or decade before 2000 ("in 1600",
     "the 1980 ... team", "1920s"), centuries ("18th century"), historical periods and roles (medieval,
     ancient, victorian, samurai, vikings, knights, founding fathers, soviet, world war ...) and named peoples,
     ethnicities and nationalities (Maasai, Zulu, Inuit, Japanese, Nigerian, Black, Asian ...).
     This is a curated list plus two rules (years, centuries): it catches the common phrasings, not every
     historical or cultural context (a named real group such as a band is caught only if listed, and a
     context in other words, "the first men on the moon", is missed). With `diversify="auto"` a detected
     context turns diversification off and the layout's `planner.note` says why; `diversify="on"` diversifies
     anyway (stated attributes still win), `"off"` (`--no-diversify`) never diversifies.
2. The mix to diversify: the given one (default gender=uniform and skin=uniform over the detector's classes)
   less every attribute the prompt states.
3. Exact counts (`seat_cells`): for each attribute of the mix, the batch's totals are Hamilton's
   largest-remainder counts of people x images seats; each image takes floor(people p_k) of every class and
   its leftover seats rotate over the images, so every image's count is within 1 of its quota (Hamilton's
   exactly for a single image) and the totals over all images are exact too. The attributes are then paired
   over the joint cells (`fairdiff.mix.joint_cells`): each seat takes the cell its image's counts still allow
   that is furthest below its joint quota so far. (Rounding the joint cells alone would not keep the marginals
   exact: 4 people over gender x skin's 8 cells of 1/8 could get skins 2, 1, 1, 0.) Ties between equal
   remainders fall in a seeded order, so no class is always the one left short.
4. Seeded shuffled placement into boxes in a row (up to `MAX_ROW` people) or a grid of rows side by side, each
   box its cell less a margin; each person's prompt is written in the model's vocabulary (world: "a photo of
   the face of a dark-skinned woman", the bundled model's captions); the whole prompt (the team, the sport) is
   the base prompt.

Written by hand: the grammar and the seat arithmetic are specific to this planner; no library offers them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.mix import Mix, check_mix, joint_cells, largest_remainder
from fairdiff.models.prompts import split_negative_terms
from fairdiff.scene.layout import MAX_PEOPLE, Layout, PlannerInfo, validate_layout
from fairdiff.world.captions import describe, fill_template
from fairdiff.world.schema import ATTRIBUTES, OCCUPATIONS

Diversify = Literal["auto", "on", "off"]
MAX_ROW = 6  # people side by side in one row; more make a grid
MAX_IMAGES = 10_000
DEFAULT_MIX_ATTRIBUTES = ("gender", "skin")

#: vocabulary -> (person prompt template, pixels of one cell (width, height), nouns kept in person prompts)
VOCABULARIES: dict[str, tuple[str, tuple[int, int], str]] = {
    "world": ("a photo of the face of a {subject}", (32, 32), "occupations"),  # the bundled model's captions
    "sd": ("a photo of a {subject}", (256, 512), "any"),  # SD 1.x / SDXL: any person noun the prompt gives
}

_NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                 "seventeen eighteen nineteen twenty")  # fmt: skip
_NUMBERS = {w: i + 1 for i, w in enumerate(_NUMBER_WORDS.split(" "))}
_NUMBERS.update({"dozen": 12, "pair": 2, "couple": 2, "trio": 3, "quartet": 4, "quintet": 5})
_NUMBER = r"(\d{1,2}|" + "|".join(_NUMBERS) + r")"

_GENDER_WORDS = {
    "woman": "woman women women's female females girl girls girls' lady ladies mother mothers sister sisters "
    "nun nuns queen queens actress actresses waitress waitresses businesswoman businesswomen sisterhood",
    "man": "man men men's male males boy boys boys' gentleman gentlemen father fathers brother brothers monk "
    "monks king kings businessman businessmen brotherhood",
}
_SKIN_PATTERNS = {
    "light": r"(?:light|fair|pale)[- ]skinned|(?:light|fair|pale) skin",
    "medium": r"medium[- ]skinned|medium skin",
    "brown": r"(?:brown|tan)[- ]skinned|brown skin",
    "dark": r"dark[- ]skinned|dark skin",
}
_AGE_WORDS = {
    "young": "young youthful teen teens teenage teenager teenagers",
    "old": "old elderly senior seniors aged older",
}
_ATTIRE_WORDS = {"revealing": "revealing", "covered": "modest covered"}
_OCCUPATION_FORMS = {o: {o, o + "s"} for o in OCCUPATIONS}
_OCCUPATION_FORMS["ceo"] = {"ceo", "ceos"}

#: person nouns (plural -> singular) the "sd" vocabulary keeps in person prompts
_PERSON_NOUNS = {
    "people": "person",
    "persons": "person",
    "players": "player",
    "athletes": "athlete",
    "warriors": "warrior",
    "soldiers": "soldier",
    "knights": "knight",
    "workers": "worker",
    "students": "student",
    "friends": "friend",
    "musicians": "musician",
    "dancers": "dancer",
    "runners": "runner",
    "colleagues": "colleague",
    **{o + "s": o for o in OCCUPATIONS if o != "ceo"},
    "ceos": "CEO",
}
_SINGULAR_PERSONS = set(_PERSON_NOUNS.values()) | {"man", "woman", "girl", "boy", "lady", "samurai", "nun", "monk"}
_GROUP_NOUNS = {"team", "group", "crew", "squad", "band", "family", "class", "choir", "party", "staff", "club"}

#: stated contexts that must not be diversified: (what, regex); see the module docstring for how far it goes
STATED_CONTEXTS: tuple[tuple[str, str], ...] = (
    ("a year before 2000", r"\b1\d{3}s?\b|\b'\d0s\b"),
    ("a century", r"\b\d{1,2}(?:st|nd|rd|th)[- ]century\b|\bcentury\b"),
    (
        "a historical period",
        r"\b(?:ancient|medieval|mediaeval|victorian|edwardian|elizabethan|tudor|renaissance|feudal|colonial|"
        r"prehistoric|stone age|bronze age|iron age|biblical|historical|historic|civil war|world war (?:i|ii|1|2|one|"
        r"two)|ww1|ww2|wwii|cold war|soviet|ussr|ottoman|byzantine|roman empire|third reich|nazi|confederate|"
        r"wild west|old west|edo period|meiji|qing dynasty|ming dynasty|dynasty)\b",
    ),
    (
        "a historical role or group",
        r"\b(?:founding fathers|samurai|shogun|ronin|vikings?|knights?|crusaders?|legionar(?:y|ies)|"
        r"centurions?|gladiators?|pharaohs?|conquistadors?|pilgrims|puritans|suffragettes|cowboys|pioneers|"
        r"apollo \d+|the beatles|spartans?|musketeers?|minutemen|redcoats)\b",
    ),
    (
        "a named people, ethnicity or nationality",
        r"\b(?:maasai|masai|zulu|inuit|sami|maori|aboriginal|native american|first nations|cherokee|navajo|sioux|"
        r"apache|aztecs?|mayans?|incas?|bedouins?|tuareg|han chinese|yoruba|igbo|amish|romani|kurdish|berbers?|"
        r"japanese|chinese|korean|vietnamese|thai|indian|pakistani|bangladeshi|nepali|tibetan|mongolian|"
        r"filipino|indonesian|nigerian|kenyan|ethiopian|ghanaian|senegalese|somali|egyptian|moroccan|"
        r"south african|african|african american|asian|east asian|south asian|european|scandinavian|nordic|"
        r"swedish|norwegian|danish|finnish|icelandic|irish|scottish|welsh|english|british|french|german|dutch|"
        r"italian|spanish|portuguese|greek|polish|russian|ukrainian|turkish|arab|arabic|persian|iranian|"
        r"israeli|jewish|mexican|brazilian|argentin(?:e|ian)|peruvian|colombian|cuban|jamaican|haitian|"
        r"latina?|latino|latinx|hispanic|caucasian|black|white|pacific islander|polynesian|hawaiian|samoan)\b",
    ),
)


def _words(spec: str) -> str:
    alternatives = "|".join(re.escape(w) for w in sorted(spec.split(), key=len, reverse=True))
    return r"(?<![\w-])(?:" + alternatives + r")(?![\w-])"


@dataclass(frozen=True)
class ParsedPrompt:
    """What `parse_prompt` read from a group prompt."""

    text: str  # the prompt without its -negative terms
    negative: str  # the -terms, joined
    count: int | None  # people the prompt asks for, None if it names no count
    noun: str | None  # the singular person noun ("nurse", "warrior"), None if none is named
    stated: dict[str, str] = field(default_factory=dict)  # attribute -> value the prompt states
    contexts: tuple[str, ...] = ()  # stated contexts found, as "what ('words')"


def stated_attributes(text: str) -> dict[str, str]:
    """The attributes `text` states (gender, skin, age, attire, occupation words; see the module docstring)."""
    lower = text.lower().replace("\u2019", "'")
    stated: dict[str, str] = {}
    for attribute, table in (("gender", _GENDER_WORDS), ("age", _AGE_WORDS), ("attire", _ATTIRE_WORDS)):
        found = {value for value, words in table.items() if re.search(_words(words), lower)}
        if len(found) == 1:
            stated[attribute] = found.pop()
    skins = {value for value, pattern in _SKIN_PATTERNS.items() if re.search(pattern, lower)}
    if len(skins) == 1:
        stated["skin"] = skins.pop()
    occupations = {o for o, forms in _OCCUPATION_FORMS.items() if re.search(_words(" ".join(forms)), lower)}
    if len(occupations) == 1:
        stated["occupation"] = occupations.pop()
    return stated


def _count(lower: str) -> int | None:
    years = re.sub(r"\b\d{3,}s?\b", " ", lower)  # "1980" is a year, not a head count
    for pattern in (
        rf"\bof {_NUMBER}\b",
        r"\b(?:a|an) (dozen|pair|couple|trio|quartet|quintet)\b",
        rf"(?<![\w.-]){_NUMBER}(?![\w.-]|-(?:year|story|star))",
    ):
        match = re.search(pattern, years)
        if match:
            word = match.group(1)
            return int(word) if word.isdigit() else _NUMBERS[word]
    return None


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Read head count, person noun, stated attributes and stated contexts from a group prompt (grammar in the
    module docstring)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise FairdiffError(f"scene prompt: expected a non-empty prompt, got {prompt!r}")
    text, negative = split_negative_terms(prompt)
    lower = text.lower().replace("\u2019", "'")
    tokens = re.findall(r"[\w'-]+", lower)
    noun = next((_PERSON_NOUNS.get(t, t) for t in tokens if t in _PERSON_NOUNS or t in _SINGULAR_PERSONS), None)
    count = _count(lower)
    if count is None and re.match(r"^(?:a|an) ", lower):
        plural = any(t in _PERSON_NOUNS or t in _GROUP_NOUNS for t in tokens) or re.search(
            _words("women men girls boys ladies gentlemen fathers mothers brothers sisters"), lower
        )
        if not plural:
            count = 1  # "a male nurse", "a Japanese samurai in 1600"
    contexts = []
    for what, pattern in STATED_CONTEXTS:
        match = re.search(pattern, lower)
        if match:
            contexts.append(f"{what} ({match.group(0)!r})")
    return ParsedPrompt(text, negative, count, noun, stated_attributes(text), tuple(contexts))


# ------------------------------------------------------------------------------------------------ resolving


@dataclass(frozen=True)
class PlanRequest:
    """A resolved request: everything both planners need, with the exact attribute cells of every seat."""

    prompt: str  # the base prompt (the user's prompt less its -terms)
    negative: str
    parsed: ParsedPrompt
    people: int
    images: int
    seed: int
    mix: Mix  # the attributes diversified (the stated ones removed); {} when not diversifying
    stated: dict[str, str]  # stated attributes among the detector's classes: every person gets them
    canvas: tuple[int, int]
    vocabulary: str
    margin: float
    note: str | None
    cells: list[list[dict[str, str]]]  # per image, per seat: the attributes (stated + diversified), unshuffled

    def counts(self, index: int) -> Counter:
        """The wanted count of each attribute combination in image `index` (keys: sorted (attribute, value))."""
        return Counter(tuple(sorted(c.items())) for c in self.cells[index])


def rotated_counts(probs: Sequence[float], people: int, images: int, order: Sequence[int]) -> list[list[int]]:
    """Per image, the count of each class: the batch's totals are Hamilton's counts of people x images seats;
    each image takes floor(people p_k) and the leftover seats rotate over the images (a class's extra seats go to
    distinct images), so every image is within 1 of its quota and one image alone is Hamilton's. `order` is the
    tie order of the classes (a permutation)."""
    ranked = [probs[k] for k in order]
    totals = largest_remainder(ranked, people * images)
    floors = [math.floor(people * p + 1e-9) for p in ranked]
    extra = [t - images * f for t, f in zip(totals, floors, strict=True)]  # each in [0, images]
    remainders = [people * p - f for p, f in zip(ranked, floors, strict=True)]
    dealing = sorted(range(len(ranked)), key=lambda j: (-remainders[j], j))
    seats = [j for j in dealing for _ in range(extra[j])]
    out = []
    for i in range(images):
        counts = list(floors)
        for s in range(i, len(seats), images):
            counts[seats[s]] += 1
        image = [0] * len(probs)
        for j, k in enumerate(order):
            image[k] = counts[j]
        out.append(image)
    return out


def seat_cells(mix: Mix, people: int, images: int, seed: int) -> list[list[dict[str, str]]]:
    """Per image, `people` attribute dicts under `mix`. Every attribute's counts are exact (`rotated_counts`:
    within 1 of the quota in each image, Hamilton's totals over the batch); the attributes are then paired seat
    by seat, each seat taking the joint cell (of those its image's remaining counts allow) furthest below its
    joint quota over the batch so far, so the joint mix is as even as the marginals let it be. Ties (equal
    quotas) fall in a seeded order, so no class is always the one left short."""
    if not mix:
        return [[{} for _ in range(people)] for _ in range(images)]
    rng = np.random.default_rng([seed, 7])
    marginals = {}
    for attribute, probs in mix.items():
        values = list(probs)
        order = list(rng.permutation(len(values)))
        counts = rotated_counts([probs[v] for v in values], people, images, order)
        marginals[attribute] = [dict(zip(values, image, strict=True)) for image in counts]
    cells = joint_cells(mix)
    tie = list(rng.permutation(len(cells)))
    placed = [0] * len(cells)
    seats_done = 0
    out = []
    for i in range(images):
        left = {a: dict(marginals[a][i]) for a in mix}
        image = []
        for _ in range(people):
            seats_done += 1
            allowed = [k for k, (cell, _) in enumerate(cells) if all(left[a][v] > 0 for a, v in cell.items())]
            k = max(allowed, key=lambda k: (cells[k][1] * seats_done - placed[k], -tie[k]))
            placed[k] += 1
            for a, v in cells[k][0].items():
                left[a][v] -= 1
            image.append(dict(cells[k][0]))
        out.append(image)
    return out


def _default_canvas(vocabulary: str, people: int) -> tuple[int, int]:
    rows, cols = _grid(people)
    cell_w, cell_h = VOCABULARIES[vocabulary][1]
    return cols * cell_w, rows * cell_h


def _grid(people: int) -> tuple[int, int]:
    rows = math.ceil(people / MAX_ROW)
    return rows, math.ceil(people / rows)


def grid_boxes(people: int, margin: float = 0.0625) -> list[tuple[float, float, float, float]]:
    """Boxes of `people` in a row (<= MAX_ROW) or rows of a grid, each its cell inset by `margin` of the cell on
    every side; a last, shorter row is centred."""
    if not 0 <= margin < 0.5:
        raise FairdiffError(f"--margin must be in [0, 0.5), got {margin}")
    rows, cols = _grid(people)
    boxes = []
    for i in range(people):
        row, col = divmod(i, cols)
        in_row = min(cols, people - row * cols)
        x0 = (col + (cols - in_row) / 2) / cols
        y0 = row / rows
        w, h = 1 / cols, 1 / rows
        boxes.append(
            (round(x0 + margin * w, 6), round(y0 + margin * h, 6), round(x0 + (1 - margin) * w, 6),
             round(y0 + (1 - margin) * h, 6))
        )  # fmt: skip
    return boxes


def resolve(
    prompt: str,
    *,
    people: int | None = None,
    images: int = 1,
    seed: int = 0,
    mix: Mapping[str, Mapping[str, float]] | None = None,
    canvas: tuple[int, int] | None = None,
    diversify: Diversify = "auto",
    vocabulary: str = "world",
    classes: Mapping[str, Sequence[str]] | None = None,
    negative: str = "",
    margin: float = 0.0625,
) -> PlanRequest:
    """Parse the prompt and fix the people, the mix and every seat's attributes (steps 1-3 of the module)."""
    classes = ATTRIBUTES if classes is None else classes
    if vocabulary not in VOCABULARIES:
        raise FairdiffError(f"--vocabulary must be one of {', '.join(VOCABULARIES)}, got {vocabulary!r}")
    if diversify not in ("auto", "on", "off"):
        raise FairdiffError(f"diversify must be auto, on or off, got {diversify!r}")
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_IMAGES:
        raise FairdiffError(f"-n must be a whole number in [1, {MAX_IMAGES}], got {images!r}")
    parsed = parse_prompt(prompt)
    count = parsed.count if people is None else people
    if count is None:
        raise FairdiffError(
            f"scene prompt {prompt!r}: no head count found (write e.g. 'a team of 5', 'five nurses'); give --people N"
        )
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PEOPLE:
        raise FairdiffError(f"--people must be a whole number in [1, {MAX_PEOPLE}], got {count!r}")
    stated = {a: v for a, v in parsed.stated.items() if a in classes and v in classes[a]}
    wanted = check_mix(mix, classes) if mix is not None else _default_mix(classes)
    notes = []
    dropped = sorted(set(wanted) & set(stated))
    if dropped:
        notes.append("stated in the prompt, not diversified: " + ", ".join(f"{a}={stated[a]}" for a in dropped))
    if diversify == "off":
        wanted, notes = {}, ["diversification off (--no-diversify)"]
    elif diversify == "auto" and parsed.contexts:
        wanted = {}
        notes.append("not diversified: the prompt states a context (" + "; ".join(parsed.contexts) + ")")
    effective = {a: dict(p) for a, p in wanted.items() if a not in stated}
    seats = seat_cells(effective, count, images, seed)
    cells = [[{**stated, **c} for c in image] for image in seats]
    size = canvas if canvas is not None else _default_canvas(vocabulary, count)
    base_negative = ", ".join(n for n in (negative.strip(), parsed.negative) if n)
    return PlanRequest(
        prompt=parsed.text,
        negative=base_negative,
        parsed=parsed,
        people=count,
        images=images,
        seed=seed,
        mix=effective,
        stated=stated,
        canvas=size,
        vocabulary=vocabulary,
        margin=margin,
        note="; ".join(notes) or None,
        cells=cells,
    )


def _default_mix(classes: Mapping[str, Sequence[str]]) -> Mix:
    return {a: {v: 1 / len(classes[a]) for v in classes[a]} for a in DEFAULT_MIX_ATTRIBUTES if a in classes}


# ------------------------------------------------------------------------------------------------- layouts


def person_prompt(attributes: Mapping[str, str], noun: str | None, vocabulary: str = "world") -> str:
    """A person's prompt in the model's vocabulary, e.g. world: "a photo of the face of a dark-skinned woman"."""
    template, _, nouns = VOCABULARIES[vocabulary]
    occupation = attributes.get("occupation")
    occupation = occupation if occupation in OCCUPATIONS else None
    word = None
    if occupation is None and nouns == "any" and noun and noun not in ("person", "man", "woman"):
        word = noun
    subject = describe(
        occupation=occupation,
        occupation_word=word,
        gender=attributes.get("gender"),
        skin=attributes.get("skin"),
        age=attributes.get("age"),
        attire=attributes.get("attire"),
    )
    return fill_template(template, subject)


def build_layout(request: PlanRequest, index: int, people: Sequence[Mapping[str, str]], planner: PlannerInfo) -> Layout:
    """A layout of image `index` with `people` (attribute dicts, in box order) in the request's grid boxes."""
    boxes = grid_boxes(len(people), request.margin)
    data = {
        "canvas": {"width": request.canvas[0], "height": request.canvas[1]},
        "prompt": request.prompt,
        "negative": request.negative,
        "people": [
            {
                "id": f"p{k + 1}",
                "box": list(box),
                "attributes": dict(attrs),
                "prompt": person_prompt(attrs, request.parsed.noun, request.vocabulary),
            }
            for k, (box, attrs) in enumerate(zip(boxes, people, strict=True))
        ],
        "planner": planner.model_dump(),
    }
    return validate_layout(data, f"planned image {index}")


def rules_info(request: PlanRequest, index: int, **extra) -> PlannerInfo:
    """The `planner` record of image `index` of a rules plan (`extra` overrides fields, e.g. fallback)."""
    fields = {
        "type": "rules",
        "seed": request.seed,
        "mix": request.mix or None,
        "index": index,
        "images": request.images,
        "note": request.note,
        **extra,
    }
    return PlannerInfo(**fields)


def rules_layout(request: PlanRequest, index: int, **info) -> Layout:
    """Image `index` of the rules plan: the seats of that image, shuffled by (seed, index), in grid boxes."""
    seats = list(request.cells[index])
    order = np.random.default_rng([request.seed, index]).permutation(len(seats))
    return build_layout(request, index, [seats[k] for k in order], rules_info(request, index, **info))


def plan_rules(prompt: str, **options) -> list[Layout]:
    """One layout per image for a group prompt (`options`: those of `resolve`)."""
    request = resolve(prompt, **options)
    return [rules_layout(request, i) for i in range(request.images)]


def plan_counts(layouts: Sequence[Layout]) -> dict[str, dict[str, int]]:
    """Attribute -> value -> people over all layouts (what a plan's summary reports)."""
    out: dict[str, Counter] = {}
    for layout in layouts:
        for person in layout.people:
            for attribute, value in person.attributes.items():
                out.setdefault(attribute, Counter())[value] += 1
    return {a: dict(sorted(c.items())) for a, c in out.items()}
