from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fairdiff.audit.arm_specs import load_arms_file
from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.arms_prompting import QuotaArm, state_attributes, stated_patterns
from fairdiff.errors import FairdiffError

DOCTOR = "a photo of the face of a doctor"
SKINS = ("light", "medium", "brown", "dark")


def _quota(**kw) -> QuotaArm:
    return arm_from_spec({"kind": "quota", "name": "q", "mix": ["gender=uniform", "skin=uniform"], **kw})


def test_quota_counts_are_exact_in_every_block_and_deterministic():
    arm = _quota()
    values = [arm.values_for(i) for i in range(24)]
    assert values == [_quota().values_for(i) for i in range(24)]
    for b in range(3):
        cells = Counter((v["gender"], v["skin"]) for v in values[8 * b : 8 * b + 8])
        assert cells == Counter({(g, s): 1 for g in ("man", "woman") for s in SKINS})
    prompts = [arm.image_options(DOCTOR, "", i, i).prompt for i in range(8)]
    assert prompts[:2] == [
        "a photo of the face of a light-skinned man doctor",
        "a photo of the face of a medium-skinned woman doctor",
    ]


def test_quota_block_gives_largest_remainder_counts_in_every_block():
    arm = arm_from_spec({"kind": "quota", "name": "q", "mix": ["gender=man:1,woman:2"], "block": 4})
    genders = [arm.values_for(i)["gender"] for i in range(12)]
    for b in range(3):  # 4 x (1/3, 2/3) = (1.33, 2.67): Hamilton gives 1 man and 3 women in each block
        assert Counter(genders[4 * b : 4 * b + 4]) == {"man": 1, "woman": 3}
    plain = arm_from_spec({"kind": "quota", "name": "q", "mix": ["gender=man:1,woman:2"]})
    assert Counter(plain.values_for(i)["gender"] for i in range(12)) == {"man": 4, "woman": 8}


@pytest.mark.parametrize(
    ("prompt", "index", "want"),
    [
        ("a photo of the face of a female doctor", 0, "a photo of the face of a light-skinned female doctor"),
        ("a photo of a dark-skinned nurse", 1, "a photo of a dark-skinned woman nurse"),
        ("an avatar of a dark-skinned woman", 0, "an avatar of a dark-skinned woman"),
        ("a portrait of a Black man", 1, "a portrait of a Black man"),
        ("a photo of a doctor with dark skin", 1, "a photo of a woman doctor with dark skin"),
        ("a photo of the face of an engineer", 3, "a photo of the face of a dark-skinned woman engineer"),
    ],
)
def test_quota_keeps_what_a_prompt_states(prompt, index, want):
    assert _quota().image_options(prompt, "", index, 0).prompt == want


def test_quota_words_per_value_and_negative_terms():
    arm = _quota(words={"gender": {"man": "male", "woman": "female"}, "skin": {"dark": "very dark-skinned"}})
    assert arm.image_options(DOCTOR, "", 1, 0).prompt == "a photo of the face of a medium-skinned female doctor"
    assert arm.image_options(DOCTOR, "", 3, 0).prompt == "a photo of the face of a very dark-skinned female doctor"
    opts = arm.image_options("an avatar of an engineer -revealing", "", 0, 7)
    assert (opts.prompt, opts.negative, opts.seed) == ("an avatar of a light-skinned male engineer", "revealing", 7)
    patterns = stated_patterns({"gender": {"woman": "feminine"}})
    assert state_attributes("a feminine pilot", {"gender": "man"}, {"gender": {"man": "man"}}, patterns) == (
        "a feminine pilot"
    )


def test_specs_round_trip_through_arm_from_spec():
    for arm in (
        _quota(block=8, words={"gender": {"woman": "female"}}),
        arm_from_spec({"kind": "guidance", "name": "fd", "mix": ["gender=uniform"], "scale": 6.0, "away": "all"}),
    ):
        again = arm_from_spec(arm.spec())
        assert type(again) is type(arm) and again.spec() == arm.spec()
        assert [again.image_options(DOCTOR, "", i, i) for i in range(8)] == [
            arm.image_options(DOCTOR, "", i, i) for i in range(8)
        ]
    fd = arm_from_spec({"kind": "guidance", "name": "fd", "mix": ["gender=uniform", "skin=uniform"]})
    assert fd.image_options(DOCTOR, "", 2, 2).prompt == DOCTOR  # guidance leaves the prompt alone
    edits = fd.edits_for("a photo of the face of a female doctor", 1)  # gender stated: skin only, toward only
    assert [(e.text, e.reverse) for e in edits] == [("a photo of the face of a medium-skinned person", False)]
    gender = fd.edits_for(DOCTOR, 1)[:2]  # Fair Diffusion's pair: toward woman, away from man
    assert [(e.text, e.reverse) for e in gender] == [
        ("a photo of the face of a woman", False),
        ("a photo of the face of a man", True),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {kind: quota, name: q}\n", "a.yaml: [0].mix: missing key"),
        ("- {kind: quota, name: q, mix: [hair=uniform]}\n", "unknown attribute 'hair'"),
        ("- {kind: quota, name: q, mix: [gender=robot]}\n", "unknown gender value 'robot'"),
        ("- {kind: quota, name: q, mix: [gender=uniform], block: 0}\n", "[0].block: "),
        ("- {kind: quota, name: q, mix: [gender=uniform], words: {skin: {purple: x}}}\n", "unknown skin value"),
        ("- {kind: guidance, name: g, mix: [gender=uniform], threshold: 1.5}\n", "[0].threshold: "),
        ("- {kind: guidance, name: g, mix: [gender=uniform], away: sometimes}\n", "[0].away: "),
        ("- {kind: guidance, name: g, mix: [gender=uniform], scale: '4'}\n", "[0].scale: "),
    ],
)
def test_bad_specs_are_one_error_line(tmp_path, text, message):
    path = tmp_path / "a.yaml"
    path.write_text(text)
    with pytest.raises(FairdiffError) as info:
        load_arms_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_both_arms_in_a_real_audit(tmp_path):
    from PIL import Image

    from fairdiff.audit.results import load_run
    from fairdiff.audit.runner import AuditConfig, run_audit
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    loaded, detector = load_pipeline("tiny"), build_detector("world", measure_accuracy=False)
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntemplates: ['a photo of the face of a {x}']\nmeasure: [gender]\nvalues: {x: [doctor]}\n")
    mix = ["gender=uniform"]
    arms = [
        {"kind": "base", "name": "base"},
        {"kind": "quota", "name": "quota", "mix": mix},
        {"kind": "guidance", "name": "fd", "mix": mix, "warmup": 0, "scale": 8.0},
        {"kind": "guidance", "name": "fd0", "mix": mix, "scale": 0.0},
    ]
    cfg = AuditConfig(suites=[str(suite)], arms=arms, images_per_prompt=2, steps=2, batch_size=8)
    record = run_audit(cfg, tmp_path / "run", loaded=loaded, detector=detector)
    assert [arm_from_spec(s).spec() for s in record["arms"]] == record["arms"]  # the run rebuilds every arm
    rows = load_run(tmp_path / "run").rows.sort_values(["arm", "seed"])
    by_arm = {a: list(g["text"]) for a, g in rows.groupby("arm")}
    assert by_arm["quota"] == ["a photo of the face of a man doctor", "a photo of the face of a woman doctor"]
    assert by_arm["fd"] == by_arm["base"]
    pixels = {(a, s): np.asarray(Image.open(tmp_path / "run" / i)) for a, s, i in rows[["arm", "seed", "image"]].values}
    for seed in (0, 1):
        assert np.array_equal(pixels[("fd0", seed)], pixels[("base", seed)])
        assert np.abs(pixels[("fd", seed)].astype(int) - pixels[("base", seed)].astype(int)).max() > 10
