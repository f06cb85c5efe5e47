"""The planner arm (`kind: planner`, registered on import of fairdiff.audit) and the per-person outcomes of group
scenes in an audit.

    - {kind: planner, name: plan, mix: [skin=uniform], planner: rules, people: null, mode: regional, diversify: auto}
    - {kind: planner, name: llm, planner: llm, llm: {url: "http://127.0.0.1:8000/v1", model: qwen, key_env: KEY}}

Plan: image i of a suite prompt whose prompt's images are n gets layout i of the plan of all n images
(`fairdiff.scene.planner.resolve(prompt, images=n, seed=run seed)` and `rules_layout(request, i)`; with
`planner: llm`, `fairdiff.scene.llm.plan_llm` over the same request, the rules plan wherever the LLM fails), so
the counts are exact within each image and over the prompt's n images, and attributes the prompt states are never
overridden. The arm's `mix` (default: the suite's `scene.mix`, else gender=uniform and skin=uniform) and `people`
(used when the prompt names no count; default the suite's `scene.people`, else 5) choose what is planned;
`diversify` is the planner's (auto: not where the prompt states a historical or named context; on; off). The image
is drawn on the layout's canvas (5 people in a row on the bundled model: 160 x 32) with the box prompts through
`fairdiff.scene.regional.regional_fields` (`mode`: regional, one UNet pass per step, or multidiffusion). The layout
is a pure function of (prompt, image index, n, run seed, the arm's and the suite's settings) for the rules planner;
an LLM's replies are not, so every image's layout is stored with it (the `scenes` table of the store).

Reference layouts: in a `kind: group` suite the other arms draw the plain prompt (their own `image_options`) on
the canvas of the layout the rules planner would have made with the suite's `scene` settings and the run seed, and
are measured against that layout: the base arm's numbers are the model's own skew on the same canvas.

Outcomes of one image (`scene_record`; crops and detection: `fairdiff.scene.draw.verify_image`). The judged
attributes are the demographic ones (gender, skin, age) any person of the layout is planned with (a stated
occupation is context, not part of the mix). For each judged attribute a, with P_a and D_a the shares of the
image's people planned and detected with each class c:

    mix_error_a = TV(P_a, D_a) = 1/2 sum_c |P_a(c) - D_a(c)|     (the least share of people whose label must change)
    mix_error   = max_a mix_error_a
    adherence   = share of people whose every judged attribute is detected as planned

Shares are position-free, adherence is per box: for a plain-prompt arm adherence is the chance that the model put
the planned person in each box, and the mix error is the meaningful number. The row's `probs` (what shares suites
read) are the detector on the whole image when the layout has one person on a canvas of the detector's input size
(a planner arm on a portrait suite is read like every other arm), else the mean over the box crops.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from fairdiff.audit.arm_specs import ArmName, ArmSpecModel, register_arm_spec
from fairdiff.audit.arms import Arm, register_arm
from fairdiff.audit.arms_prompting import MixItems, mix_of
from fairdiff.config import ConfigModel, ConfigValueError, Expected, NonEmptyStr
from fairdiff.errors import FairdiffError
from fairdiff.world.schema import ATTRIBUTES, DEMOGRAPHIC_ATTRIBUTES

if TYPE_CHECKING:
    from fairdiff.scene.layout import Layout

DEFAULT_PEOPLE = 5  # people per image when neither the prompt, the arm nor the suite says
SCENE_MODES = ("regional", "multidiffusion")


# -------------------------------------------------------------------------------------------------- specs


def _url(url: str) -> str:
    from fairdiff.scene.llm import check_url

    try:
        return check_url(url)
    except FairdiffError as exc:
        raise ConfigValueError(str(exc).removeprefix("--llm-url ")) from None


class LLMSpec(ConfigModel):
    """An OpenAI-compatible chat server for `planner: llm` (the key is read from the environment variable
    `key_env` when the plan is made; it is never stored)."""

    url: Annotated[str, Expected("an http(s) URL such as http://127.0.0.1:8000/v1"), AfterValidator(_url)]
    model: NonEmptyStr
    key_env: NonEmptyStr = "OPENAI_API_KEY"
    timeout: Annotated[float, Expected("seconds in (0, 3600]"), Field(gt=0, le=3600)] = 60.0
    retries: Annotated[int, Expected("a whole number from 0 to 10"), Field(ge=0, le=10)] = 2


People = Annotated[int, Expected("a whole number of people from 1 to 64"), Field(ge=1, le=64)]


@register_arm_spec("planner")
class PlannerArmSpec(ArmSpecModel):
    """A planned layout per image (exact quotas), drawn region by region."""

    kind: Literal["planner"] = "planner"
    name: ArmName = "planner"
    mix: MixItems | None = None
    planner: Annotated[Literal["rules", "llm"], Expected("one of rules, llm")] = "rules"
    llm: LLMSpec | None = None
    people: People | None = None
    mode: Annotated[Literal["regional", "multidiffusion"], Expected("one of regional, multidiffusion")] = "regional"
    diversify: Annotated[Literal["auto", "on", "off"], Expected("one of auto, on, off")] = "auto"

    def model_post_init(self, _context: Any) -> None:
        if (self.planner == "llm") != (self.llm is not None):
            raise ConfigValueError("`planner: llm` and an `llm: {url, model}` block go together", "llm")


# --------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class SceneSettings:
    """What the planner is told for one suite: people when the prompt names none, the mix, diversify, canvas."""

    people: int = DEFAULT_PEOPLE
    mix: tuple[str, ...] | None = None
    diversify: str = "auto"
    canvas: tuple[int, int] | None = None  # (width, height) in pixels

    @classmethod
    def of(cls, scene: Mapping[str, Any] | None) -> SceneSettings:
        scene = scene or {}
        canvas = scene.get("canvas")
        return cls(
            people=scene.get("people") or DEFAULT_PEOPLE,
            mix=tuple(scene["mix"]) if scene.get("mix") else None,
            diversify=scene.get("diversify") or "auto",
            canvas=tuple(canvas) if canvas else None,
        )


def _request(prompt: str, images: int, seed: int, settings: SceneSettings):
    from fairdiff.mix import parse_mix
    from fairdiff.scene.planner import parse_prompt, resolve

    count = parse_prompt(prompt).count
    return resolve(
        prompt,
        people=count if count is not None else settings.people,
        images=images,
        seed=seed,
        mix=parse_mix(list(settings.mix), ATTRIBUTES) if settings.mix else None,
        canvas=settings.canvas,
        diversify=settings.diversify,
        classes=ATTRIBUTES,
    )


class _Plans:
    """Layouts per (prompt, images, seed, settings), planned once for all images of a prompt."""

    def __init__(self) -> None:
        self._plans: dict[tuple, list[Layout]] = {}

    def get(self, key: tuple, make) -> list[Layout]:
        if key not in self._plans:
            self._plans[key] = make()
        return self._plans[key]


_REFERENCE = _Plans()


def reference_layout(prompt: str, index: int, images: int, seed: int, scene: Mapping[str, Any] | None) -> Layout:
    """The layout the rules planner makes for image `index` of `images` with a suite's `scene` settings."""
    from fairdiff.scene.planner import rules_layout

    settings = SceneSettings.of(scene)

    def make() -> list[Layout]:
        request = _request(prompt, images, seed, settings)
        return [rules_layout(request, i) for i in range(images)]

    return _REFERENCE.get((prompt, images, seed, settings), make)[index]


@register_arm("planner")
@dataclass
class PlannerArm(Arm):
    """Image i of a prompt is drawn from layout i of the prompt's plan (see the module docstring)."""

    name: str = "planner"
    mix: list[str] | None = None
    planner: str = "rules"
    llm: dict[str, Any] | None = None
    people: int | None = None
    mode: str = "regional"
    diversify: str = "auto"

    def __post_init__(self) -> None:
        if self.mix:
            mix_of(self.mix)  # a bad item is one error before any plan (the spec model says the same)
        self._plans = _Plans()
        self.llm_results: dict[tuple, list[Any]] = {}  # what the LLM planner did, per plan

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "mix": list(self.mix) if self.mix else None,
            "planner": self.planner,
            "llm": dict(self.llm) if self.llm else None,
            "people": self.people,
            "mode": self.mode,
            "diversify": self.diversify,
        }

    def batch_key(self, run_guidance: float | None) -> tuple:
        return ("planner", self.mode, *super().batch_key(run_guidance))  # regional fields: its own batches

    def settings(self, scene: Mapping[str, Any] | None) -> SceneSettings:
        """The suite's scene settings with the arm's own choices over them."""
        suite = SceneSettings.of(scene)
        return SceneSettings(
            people=self.people or suite.people,
            mix=tuple(self.mix) if self.mix else suite.mix,
            diversify=self.diversify,
            canvas=suite.canvas,
        )

    def layout(self, prompt: str, index: int, images: int, seed: int, scene: Mapping[str, Any] | None = None) -> Layout:
        """Layout `index` of the plan of a prompt's `images` images (run seed `seed`, a suite's `scene`)."""
        settings = self.settings(scene)
        key = (prompt, images, seed, settings)
        return self._plans.get(key, lambda: self._plan(key))[index]

    def _plan(self, key: tuple) -> list[Layout]:
        from fairdiff.scene.planner import rules_layout

        prompt, images, seed, settings = key
        request = _request(prompt, images, seed, settings)
        if self.planner != "llm":
            return [rules_layout(request, i) for i in range(images)]
        from fairdiff.scene.llm import LLMConfig, plan_llm

        llm = LLMSpec.model_validate(self.llm)
        config = LLMConfig(
            url=llm.url,
            model=llm.model,
            api_key=os.environ.get(llm.key_env),
            timeout=llm.timeout,
            retries=llm.retries,
        )
        results = plan_llm(request, config, classes=ATTRIBUTES)
        self.llm_results[key] = results
        return [r.layout for r in results]

    @contextmanager
    def sampling(self, runtime, jobs: Sequence[Any]):
        from fairdiff.scene.regional import regional_fields

        layouts = [j.layout for j in jobs]
        if any(lay is None for lay in layouts):
            raise FairdiffError(f"arm {self.name}: a job without a layout reached the planner arm's batch")
        with regional_fields(self.model(runtime), layouts, self.mode) as fields:
            yield fields


def scene_layout(arm: Arm, suite, prompt: str, index: int, images: int, seed: int) -> tuple[Layout | None, str]:
    """The layout image `index` of a suite prompt is drawn from (planner arms) or measured against (other arms in a
    `kind: group` suite), and who planned it: ("arm" | "reference" | "", None where there is none)."""
    scene = getattr(suite, "scene", None)
    if isinstance(arm, PlannerArm):
        return arm.layout(prompt, index, images, seed, scene), "arm"
    if getattr(suite, "kind", None) == "group":
        return reference_layout(prompt, index, images, seed, scene), "reference"
    return None, ""


# ------------------------------------------------------------------------------------------------ outcomes


class _Recording:
    """A detector that keeps the probabilities of its last call (so the box crops are detected once)."""

    def __init__(self, detector) -> None:
        self._detector = detector
        self.last: dict[str, np.ndarray] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.last = self._detector(images)
        return self.last


def judged_attributes(layout: Layout, classes: Mapping[str, Sequence[str]]) -> list[str]:
    """The demographic attributes any person of `layout` is planned with that the detector reads."""
    planned = {a for p in layout.people for a in p.attributes}
    return [a for a in DEMOGRAPHIC_ATTRIBUTES if a in planned and a in classes]


def total_variation(planned: Sequence[str], detected: Sequence[str], classes: Sequence[str]) -> float:
    """1/2 sum_c |share of c in `planned` - share of c in `detected`| (equal-length lists of labels)."""
    n = len(planned)
    if n == 0 or len(detected) != n:
        raise FairdiffError(f"mix error: {n} planned labels for {len(detected)} detected ones")
    return 0.5 * sum(abs(planned.count(c) - detected.count(c)) / n for c in classes)


def scene_record(image: np.ndarray, layout: Layout, detector, planned_by: str) -> tuple[dict, dict[str, list[float]]]:
    """(the scene record of one drawn image, the row's probabilities); see the module docstring."""
    from fairdiff.scene.draw import crop_size, verify_image

    recording = _Recording(detector)
    verified = verify_image(image, layout, recording)
    classes = detector.classes
    judged = judged_attributes(layout, classes)
    people, errors, hits = [], {}, []
    for person, v in zip(layout.people, verified["people"], strict=True):
        planned = {a: person.attributes[a] for a in judged if a in person.attributes}
        ok = all(v["detected"][a] == value for a, value in planned.items()) if planned else None
        if ok is not None:
            hits.append(ok)
        people.append(
            {
                "id": person.id,
                "box": list(person.box),
                "planned": planned,
                "detected": {a: v["detected"][a] for a in judged},
                "confidence": {a: v["confidence"][a] for a in judged},
                "as_planned": ok,
            }
        )
    for a in judged:
        pairs = [(p["planned"][a], p["detected"][a]) for p in people if a in p["planned"]]
        errors[a] = round(total_variation([x for x, _ in pairs], [y for _, y in pairs], classes[a]), 6)
    record = {
        "planned_by": planned_by,
        "judged": judged,
        "adherence": (sum(hits) / len(hits)) if hits else None,
        "people_judged": len(hits),
        "people_as_planned": int(sum(hits)),
        "mix_error": max(errors.values()) if errors else None,
        "mix_error_by_attribute": errors,
        "detector": detector.name,
        "people": people,
        "layout": layout.model_dump(mode="json"),
    }
    size = crop_size(detector)
    if len(layout.people) == 1 and image.shape[:2] == (size, size):
        probs = detector(image[None])
        row = {a: [round(float(x), 6) for x in p[0]] for a, p in probs.items()}
    else:
        row = {a: [round(float(x), 6) for x in p.mean(axis=0)] for a, p in recording.last.items()}
    return record, row
