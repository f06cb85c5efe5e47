"""CLIP zero-shot detector on a tiny random CLIP saved to a tmp dir (no download)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from fairdiff.detect import build_detector
from fairdiff.detect.clip import DEFAULT_TEMPLATES, ClipZeroShotDetector, load_templates
from fairdiff.errors import FairdiffError
from fairdiff.models.random_pipelines import save_tiny_clip

PROJECTION_DIM = 16


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-clip")
    save_tiny_clip(directory)
    return directory


@pytest.fixture(scope="module")
def detector(clip_dir):
    return ClipZeroShotDetector(str(clip_dir))


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size, 3), dtype=np.uint8)


def test_probabilities_have_one_row_per_image_summing_to_one(detector):
    probs = detector(random_images(5))
    assert detector.classes == {
        "gender": ["man", "woman"],
        "skin": ["light", "medium", "brown", "dark"],
        "age": ["young", "old"],
    }
    assert {a: p.shape for a, p in probs.items()} == {"gender": (5, 2), "skin": (5, 4), "age": (5, 2)}
    for p in probs.values():
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        assert (p > 0).all()
    assert detector.accuracy == {}  # nothing measured, so reports say "not measured"
    assert detector.outcomes == {}


def test_deterministic_across_loads_and_batch_sizes(detector, clip_dir):
    images = random_images(5, seed=1)
    first = detector(images)
    again = ClipZeroShotDetector(str(clip_dir), batch_size=2)(images)
    for a in first:
        np.testing.assert_array_equal(first[a], detector(images)[a])
        np.testing.assert_allclose(first[a], again[a], atol=1e-6)


def test_build_detector_by_name(clip_dir):
    built = build_detector("clip", checkpoint=str(clip_dir), attributes=["gender"])
    assert isinstance(built, ClipZeroShotDetector)
    assert list(built(random_images(2))) == ["gender"]
    assert built.describe()["weights"].keys() == {"model.safetensors"}


def test_class_embedding_is_the_normalized_mean_of_normalized_prompt_embeddings(detector):
    prompts = detector.prompts["skin"]["dark"]
    assert len(prompts) == 3 * 3  # 3 templates x 3 phrases
    assert "a portrait of a person with very dark skin." in prompts
    single = torch.cat([detector.text_embeddings([p]) for p in prompts])  # one at a time: no padding effects
    np.testing.assert_allclose(single.norm(dim=-1), 1.0, atol=1e-6)
    expected = torch.nn.functional.normalize(single.mean(0), dim=0)
    np.testing.assert_allclose(detector.class_embeddings["skin"][3], expected, atol=1e-5)


def test_templates_are_ensembled_hand_computed(clip_dir, monkeypatch):
    basis = torch.eye(PROJECTION_DIM)
    fake = {"a x": basis[0], "b x": basis[1], "a y": basis[2], "b y": -basis[1]}
    seen = []

    def text_embeddings(self, prompts):
        seen.extend(prompts)
        return torch.stack([fake[p] for p in prompts])

    monkeypatch.setattr(ClipZeroShotDetector, "text_embeddings", text_embeddings)
    templates = {"t": {"templates": ["a {}", "b {}"], "classes": {"x": ["x"], "y": ["y"]}}}
    det = ClipZeroShotDetector(str(clip_dir), templates=templates, attributes=["t"])
    assert seen == ["a x", "b x", "a y", "b y"]
    s = 2**-0.5
    expected = torch.zeros(2, PROJECTION_DIM)
    expected[0, 0], expected[0, 1] = s, s  # mean([1,0], [0,1]) renormalized
    expected[1, 2], expected[1, 1] = s, -s
    np.testing.assert_allclose(det.class_embeddings["t"], expected, atol=1e-6)

    images = random_images(3, seed=2)
    feats = torch.from_numpy(det.image_embeddings(images))
    logits = det.logit_scale * torch.stack([s * (feats[:, 0] + feats[:, 1]), s * (feats[:, 2] - feats[:, 1])], 1)
    np.testing.assert_allclose(det(images)["t"], torch.softmax(logits, -1), atol=1e-6)


def test_yaml_templates_replace_named_attributes_and_keep_the_rest(tmp_path, clip_dir):
    path = tmp_path / "templates.yaml"
    path.write_text(
        "gender:\n  classes: {man: [a photo of a man], woman: [a photo of a woman]}\n"
        "attire:\n  templates: ['a photo of a person in {} clothes']\n"
        "  classes: {covered: [modest], revealing: [revealing]}\n"
    )
    det = ClipZeroShotDetector(str(clip_dir), templates=path)
    assert det.prompts["gender"] == {"man": ["a photo of a man"], "woman": ["a photo of a woman"]}
    assert det.prompts["attire"]["revealing"] == ["a photo of a person in revealing clothes"]
    assert det.prompts["skin"] == load_templates(None)["skin"]
    assert det.outcomes == {"revealing": "attire=revealing"}
    assert det(random_images(2))["attire"].shape == (2, 2)


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ({"gender": {"templates": ["a photo of a {}"]}}, "needs 'classes'"),
        ({"gender": {"classes": {"man": ["man"]}}}, "at least 2 classes"),
        ({"gender": {"classes": {"man": ["man"], "woman": []}}}, "class 'woman' needs a non-empty list"),
        ({"gender": {"templates": ["a photo"], "classes": {"man": ["m"], "woman": ["w"]}}}, "exactly one"),
        ({"gender": {"templates": [], "classes": {"man": ["m"], "woman": ["w"]}}}, "non-empty list"),
        ({"gender": {"prompts": [], "classes": {"man": ["m"], "woman": ["w"]}}}, "unknown keys"),
        ({"gender": ["man", "woman"]}, "expected a mapping"),
        (["gender"], "must map attribute"),
    ],
)
def test_bad_template_config_is_a_clear_error(templates, message):
    with pytest.raises(FairdiffError, match=message):
        load_templates(templates)


def test_missing_checkpoint_and_bad_options_are_clear_errors(tmp_path, clip_dir):
    with pytest.raises(FairdiffError, match="not found: not a directory"):
        ClipZeroShotDetector(str(tmp_path / "no-such-clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FairdiffError, match="no config.json"):
        ClipZeroShotDetector(str(tmp_path / "empty"))
    with pytest.raises(FairdiffError, match="could not be loaded"):  # HF_HUB_OFFLINE=1 (conftest): fails fast
        ClipZeroShotDetector("nobody/no-such-clip")
    with pytest.raises(FairdiffError, match="choose from"):
        ClipZeroShotDetector(str(clip_dir), attributes=["ethnicity"])
    with pytest.raises(FairdiffError, match="templates file"):
        ClipZeroShotDetector(str(clip_dir), templates=tmp_path / "missing.yaml")
    with pytest.raises(FairdiffError, match="batch_size"):
        ClipZeroShotDetector(str(clip_dir), batch_size=0)


def test_default_templates_cover_the_world_classes():
    from fairdiff.world.schema import ATTRIBUTES

    for attribute, spec in DEFAULT_TEMPLATES.items():
        assert tuple(spec["classes"]) == ATTRIBUTES[attribute]


def test_clip_t_and_clip_i(detector):
    images = random_images(3, seed=3)
    prompts = ["a photo of a doctor", "a photo of a nurse", "a photo of a pilot"]
    emb = detector.image_embeddings(images)
    assert emb.shape == (3, PROJECTION_DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(detector.image_embeddings(images[:1]) @ emb[0], [1.0], atol=1e-6)  # same image: CLIP-I 1
    sim = detector.image_text_similarity(images, prompts)
    expected = (emb * detector.text_embeddings(prompts).numpy()).sum(1)
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    assert sim.shape == (3,) and len(set(np.round(sim, 6))) == 3
    np.testing.assert_allclose(detector.image_text_similarity(images, prompts[0])[0], sim[0], atol=1e-6)
    with pytest.raises(FairdiffError, match="3 images but 2 prompts"):
        detector.image_text_similarity(images, prompts[:2])


def test_measure_accuracy_on_labelled_files(tmp_path, clip_dir):
    det = ClipZeroShotDetector(str(clip_dir), attributes=["gender", "skin"])
    images = random_images(4, seed=4)
    predicted = {a: [det.classes[a][k] for k in p.argmax(1)] for a, p in det(images).items()}
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    flip = {"man": "woman", "woman": "man"}
    gender = [*predicted["gender"][:3], flip[predicted["gender"][3]]]  # 3 of 4 right
    skin = ["", *predicted["skin"][1:]]  # one unlabelled, 3 of 3 right
    measured = det.measure_accuracy(paths, {"gender": gender, "skin": skin})
    assert measured == {
        "gender": {"accuracy": 0.75, "n": 4, "on": "4 labelled images"},
        "skin": {"accuracy": 1.0, "n": 3, "on": "4 labelled images"},
    }
    assert det.accuracy == measured

    csv_path = tmp_path / "labels.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "gender"])
        writer.writerows([[p.name, g] for p, g in zip(paths, gender, strict=True)])
    again = ClipZeroShotDetector(str(clip_dir), attributes=["gender", "skin"], accuracy_csv=csv_path)
    assert again.accuracy == {"gender": {"accuracy": 0.75, "n": 4, "on": str(csv_path)}}

    with pytest.raises(FairdiffError, match="'girl' is not one of"):
        det.measure_accuracy(paths, {"gender": ["girl", "", "", ""]})
    with pytest.raises(FairdiffError, match="3 labels for 4 images"):
        det.measure_accuracy(paths, {"gender": gender[:3]})
    with pytest.raises(FairdiffError, match="needs a 'path' column"):
        (tmp_path / "bad.csv").write_text("file,gender\na.png,man\n")
        det.measure_accuracy_csv(tmp_path / "bad.csv")


def test_templates_with_other_braces_are_taken_literally():
    spec = {"templates": ["a {} {style}", "a } {}"], "classes": {"man": ["man"], "woman": ["woman"]}}
    prompts = load_templates({"gender": spec})
    assert prompts["gender"]["man"] == ["a man {style}", "a } man"]


def test_labelled_csv_saved_by_excel_and_a_row_without_path(tmp_path):
    from fairdiff.detect.labelled import read_labelled_csv

    path = tmp_path / "labels.csv"
    path.write_bytes("path,gender\na.png,man\n".encode("utf-8-sig"))  # starts with a byte-order mark
    paths, labels = read_labelled_csv(path, ["gender"])
    assert paths == [tmp_path / "a.png"] and labels == {"gender": ["man"]}
    path.write_text("path,gender\na.png,man\n,woman\n")
    with pytest.raises(FairdiffError, match="line 3 has no path"):
        read_labelled_csv(path, ["gender"])
