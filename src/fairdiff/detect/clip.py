"""CLIP zero-shot detector for perceived attributes of real-model images, plus CLIP-T / CLIP-I features.

For each attribute, every class has a list of prompts (templates x phrases). A class's text embedding is the
mean of its prompts' L2-normalized embeddings, normalized again (the prompt ensembling of Radford et al. 2021,
section 3.1.4); an image's probabilities are softmax(logit_scale * cosine) over the attribute's classes.
Zero-shot skin tone is weak (see docs/detectors.md); its accuracy is "not measured" unless the user measures it
on labelled images (`accuracy_csv=` or `measure_accuracy`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fairdiff.detect.base import Detector, register_detector
from fairdiff.detect.labelled import LabelledAccuracy
from fairdiff.errors import FairdiffError

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

#: attribute -> {"templates": [... "{}" ...], "classes": {class: [phrase, ...]}}; a class's prompts are every
#: template filled with every phrase. Classes match the portrait world's (skin: its 4 Monk Skin Tone bins).
DEFAULT_TEMPLATES: dict[str, dict] = {
    "gender": {
        "templates": [
            "a photo of a {}.",
            "a portrait photo of a {}.",
            "a close-up photo of the face of a {}.",
            "a picture of a {}.",
        ],
        "classes": {"man": ["man", "male person"], "woman": ["woman", "female person"]},
    },
    "skin": {
        "templates": [
            "a photo of a person with {} skin.",
            "a portrait of a person with {} skin.",
            "a close-up photo of the face of a person with {} skin.",
        ],
        "classes": {
            "light": ["light", "fair", "pale"],  # MST 1-3
            "medium": ["medium", "olive", "tan"],  # MST 4-5
            "brown": ["brown", "medium-dark"],  # MST 6-7
            "dark": ["dark", "dark brown", "very dark"],  # MST 8-10
        },
    },
    "age": {
        "templates": [
            "a photo of a {} person.",
            "a portrait of a {} person.",
            "a close-up photo of the face of a {} person.",
        ],
        "classes": {"young": ["young", "youthful"], "old": ["old", "elderly"]},
    },
}


def load_templates(templates: Mapping | str | Path | None) -> dict[str, dict[str, list[str]]]:
    """Validated prompts per attribute and class: {attribute: {class: [prompt, ...]}}.

    `templates` (a dict or a YAML file) replaces the defaults for the attributes it names and keeps the others.
    An attribute is {"templates": [...] (optional, each with one "{}"), "classes": {class: [phrase, ...]}};
    without templates, phrases are whole prompts."""
    config = copy.deepcopy(DEFAULT_TEMPLATES)
    if isinstance(templates, (str, Path)):
        import yaml

        path = Path(templates).expanduser()
        if not path.is_file():
            raise FairdiffError(f"CLIP templates file {str(path)!r} not found")
        try:
            templates = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise FairdiffError(f"CLIP templates file {str(path)!r} is not valid YAML: {exc}") from None
    if templates is not None:
        if not isinstance(templates, Mapping):
            raise FairdiffError(f"CLIP templates must map attribute -> config, got {type(templates).__name__}")
        config.update(templates)
    return {attribute: _attribute_prompts(attribute, spec) for attribute, spec in config.items()}


def _attribute_prompts(attribute: str, spec: object) -> dict[str, list[str]]:
    where = f"CLIP templates, attribute {attribute!r}"
    if not isinstance(spec, Mapping):
        raise FairdiffError(f"{where}: expected a mapping with 'classes' (and 'templates'), got {spec!r}")
    unknown = set(spec) - {"templates", "classes"}
    if unknown:
        raise FairdiffError(f"{where}: unknown keys {sorted(unknown)}; allowed: 'templates', 'classes'")
    classes = spec.get("classes")
    if not isinstance(classes, Mapping) or len(classes) < 2:
        raise FairdiffError(f"{where}: needs 'classes' with at least 2 classes, got {classes!r}")
    templates = spec.get("templates", ["{}"])
    if isinstance(templates, str) or not templates:
        raise FairdiffError(f"{where}: 'templates' must be a non-empty list, got {templates!r}")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise FairdiffError(f"{where}: each template needs exactly one '{{}}' for the class, got {template!r}")
    prompts = {}
    for name, phrases in classes.items():
        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise FairdiffError(f"{where}: class {name!r} needs a non-empty list of phrases, got {phrases!r}")
        prompts[str(name)] = [t.replace("{}", p) for t in templates for p in phrases]  # not format: {x}, }
    return prompts


def _features(output: object) -> torch.Tensor:
    """Projected features from get_{text,image}_features (a tensor before transformers 5, an output after)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@register_detector("clip")
class ClipZeroShotDetector(LabelledAccuracy, Detector):
    """Zero-shot perceived gender / skin tone / age from any transformers CLIP checkpoint (hub id or directory).

    Options: `checkpoint`, `templates` (dict or YAML file; see `load_templates`), `attributes` (subset to keep),
    `device`, `dtype`, `batch_size`, `accuracy_csv` (labelled images to measure accuracy on)."""

    name = "clip"

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        *,
        templates: Mapping | str | Path | None = None,
        attributes: Sequence[str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        accuracy_csv: str | Path | None = None,
    ) -> None:
        super().__init__()
        from fairdiff.models.loading import resolve_device, resolve_dtype

        if batch_size < 1:
            raise FairdiffError(f"`batch_size` must be >= 1, got {batch_size}")
        prompts = load_templates(templates)
        if attributes is not None:
            missing = [a for a in attributes if a not in prompts]
            if missing or not attributes:
                raise FairdiffError(f"`attributes` {list(attributes)}: choose from {list(prompts)}")
            prompts = {a: prompts[a] for a in attributes}
        self.prompts = prompts  # {attribute: {class: [prompt, ...]}}
        self.classes = {a: list(by_class) for a, by_class in prompts.items()}
        if "revealing" in self.classes.get("attire", []):  # same outcome convention as the world detector
            self.outcomes = {"revealing": "attire=revealing"}
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.source = _resolve_checkpoint(checkpoint)
        self.model, self.tokenizer, self.image_processor = _load_clip(checkpoint, self.source, self.dtype)
        self.model.to(self.device)
        self.logit_scale = float(self.model.logit_scale.exp())
        self.class_embeddings = {a: self._class_embeddings(by_class) for a, by_class in prompts.items()}  # (K, D)
        self._weight_hashes: dict[str, str] | None = None
        if accuracy_csv is not None:
            self.measure_accuracy_csv(accuracy_csv)

    # --- embeddings -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalized float32 text embeddings (P, D) on the CPU; prompts longer than the model reads are cut."""
        max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(
                list(prompts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(self.device)
            feats = _features(self.model.get_text_features(**tokens)).float().cpu()  # (B, D)
            out.append(torch.nn.functional.normalize(feats, dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def _image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images (any sizes; the processor resizes and crops) -> normalized float32 (N, D) on the CPU."""
        out = [torch.zeros(0, self.model.config.projection_dim)]
        for start in range(0, len(images), self.batch_size):
            batch = [np.ascontiguousarray(im) for im in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt").pixel_values
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            out.append(torch.nn.functional.normalize(_features(feats).float().cpu(), dim=-1))
        return torch.cat(out)

    def _class_embeddings(self, by_class: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """(K, D): per class, the normalized mean of its prompts' normalized embeddings."""
        flat = [p for prompts in by_class.values() for p in prompts]
        emb = self.text_embeddings(flat)  # (P, D)
        rows, start = [], 0
        for prompts in by_class.values():
            rows.append(emb[start : start + len(prompts)].mean(0))
            start += len(prompts)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def image_embeddings(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalized CLIP image embeddings (N, D); CLIP-I of two images is the dot product of theirs."""
        return self._image_features(list(images)).numpy()

    def image_text_similarity(
        self, images: np.ndarray | Sequence[np.ndarray], prompts: str | Sequence[str]
    ) -> np.ndarray:
        """CLIP-T: cosine similarity (N,) of image i and prompt i (one prompt is used for every image).
        CLIPScore-style numbers are 100 * max(cos, 0) (torchmetrics) or 2.5 * max(cos, 0) (Hessel et al. 2021)."""
        images = list(images)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise FairdiffError(f"image_text_similarity: {len(images)} images but {len(prompts)} prompts")
        if not images:
            return np.zeros(0, dtype=np.float32)
        return (self._image_features(images) * self.text_embeddings(prompts)).sum(-1).numpy()

    # --- detection --------------------------------------------------------------------------------------------

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._predict_list(list(images))

    def _predict_list(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        feats = self._image_features(images)  # (N, D)
        return {
            a: torch.softmax(self.logit_scale * feats @ emb.T, dim=-1).numpy()  # (N, K)
            for a, emb in self.class_embeddings.items()
        }

    def describe(self) -> dict:
        if self._weight_hashes is None:
            self._weight_hashes = _weight_hashes(self.source)
        return {
            **super().describe(),
            "checkpoint": self.checkpoint,
            "source": self.source,
            "prompts": self.prompts,
            "logit_scale": self.logit_scale,
            "weights": self._weight_hashes,
        }


def _resolve_checkpoint(checkpoint: str) -> str:
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FairdiffError(f"CLIP checkpoint {checkpoint!r}: directory has no config.json")
        return str(path.resolve())
    if _HUB_ID.match(checkpoint) and not path.exists() and not checkpoint.startswith((".", "/", "~")):
        return checkpoint
    raise FairdiffError(f"CLIP checkpoint {checkpoint!r} not found: not a directory, and not a hub id (owner/name)")


def _load_clip(checkpoint: str, source: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as transformers_logging

    try:  # transformers 5: the PIL/numpy processor (no torchvision); older versions name it CLIPImageProcessor
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        image_processor = ImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FairdiffError(f"CLIP checkpoint {checkpoint!r} could not be loaded: {first}") from None
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    model.eval().requires_grad_(False)
    logger.info("loaded CLIP %s from %s", checkpoint, source)
    return model, tokenizer, image_processor


def _weight_hashes(source: str) -> dict[str, str]:
    """sha256 of the checkpoint's weight files (hub ids: from the local cache; {} when not there)."""
    from fairdiff.files import file_sha256

    root = Path(source)
    if not root.is_dir():
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(source, local_files_only=True))
        except Exception:  # not in the cache: nothing on disk to hash
            return {}
    return {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.suffix in _WEIGHT_SUFFIXES and p.is_file()
    }
