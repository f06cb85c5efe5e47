"""The world classifier: a small CNN with one softmax head per attribute, trained on uniform renders.

Training draws attributes uniformly (not from the biased world), so the classifier has no prior to leak into
the shares it measures. Light augmentation (pixel noise, slight blur, brightness) makes it robust to the
small artefacts of generated images. Weights are bundled as safetensors with a JSON sidecar.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import FairdiffError
from fairdiff.files import write_atomic
from fairdiff.world.render import render_batch
from fairdiff.world.schema import ATTRIBUTES, Portrait

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CLASSIFIER = ASSETS / "classifier.safetensors"


class WorldClassifier(nn.Module):
    """(B, 3, 32, 32) in [-1, 1] -> {attribute: logits (B, K)}."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 2 * w))  # (B, 2w, 4, 4)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 256), nn.ReLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({a: nn.Linear(256, len(v)) for a, v in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x))  # (B, 256)
        return {a: head(h) for a, head in self.heads.items()}


@dataclass
class TrainClassifierConfig:
    n_train: int = 24_000
    n_test: int = 5_000  # held out: different seeds, drawn the same way
    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 16
    seed: int = 0


def uniform_portraits(n: int, seed: int) -> tuple[list[Portrait], list[int]]:
    """`n` portraits with every attribute drawn uniformly, and their render seeds."""
    rng = np.random.default_rng(seed)
    cols = {a: rng.integers(len(v), size=n) for a, v in ATTRIBUTES.items()}
    portraits = [Portrait(**{a: ATTRIBUTES[a][cols[a][i]] for a in ATTRIBUTES}) for i in range(n)]
    return portraits, [int(s) for s in rng.integers(2**31 - 1, size=n)]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> float (N, 3, 32, 32) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x * (1 + 0.06 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5))
    blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3).contiguous(), groups=3)
    x = torch.where(blur, blurred, x)
    return x + 0.04 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)


@torch.no_grad()
def predict_probs(model: WorldClassifier, images: np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Per-image class probabilities {attribute: (N, K)} for uint8 images (N, 32, 32, 3)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
    for i in range(0, len(images), batch_size):
        logits = model(images_to_tensor(images[i : i + batch_size]))
        for a, lg in logits.items():
            out[a].append(lg.softmax(-1).numpy())
    return {a: np.concatenate(v) if v else np.zeros((0, len(ATTRIBUTES[a]))) for a, v in out.items()}


@torch.no_grad()
def features(model: WorldClassifier, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Penultimate features (N, 256) of uint8 images (N, 32, 32, 3): the trunk's output every head reads, in eval
    mode (no dropout), float64. A function, not a method: `WorldClassifier.features` is its conv stack."""
    model.eval()
    out = [
        model.trunk(model.features(images_to_tensor(images[i : i + batch_size]))).double().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.trunk[1].out_features))


def accuracy(model: WorldClassifier, images: np.ndarray, portraits: list[Portrait]) -> dict[str, float]:
    """Per-attribute accuracy of `model` on labelled renders."""
    probs = predict_probs(model, images)
    return {a: float(np.mean(probs[a].argmax(1) == np.array([p.index(a) for p in portraits]))) for a in ATTRIBUTES}


def sidecar_path(weights: Path) -> Path:
    """The JSON sidecar (config, held-out accuracy) beside a classifier weights file: `X.safetensors` -> `X.json`."""
    return Path(weights).with_suffix(".json")


def check_train_classifier(cfg: TrainClassifierConfig, out: Path) -> None:
    """What `train_classifier` refuses, checked before anything is rendered."""
    for name, value in (("n_train", cfg.n_train), ("n_test", cfg.n_test), ("epochs", cfg.epochs)):
        if value < 1:
            raise FairdiffError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.batch_size < 1:
        raise FairdiffError(f"batch size must be >= 1, got {cfg.batch_size}")
    if cfg.n_train < cfg.batch_size:
        raise FairdiffError(
            f"--n-train {cfg.n_train} is below the batch size {cfg.batch_size}: not one training step; "
            f"give at least {cfg.batch_size}"
        )
    if sidecar_path(out) == Path(out):
        raise FairdiffError(
            f"--out {out}: the weights file cannot end in .json (its sidecar {sidecar_path(out).name} is written "
            "beside it); use e.g. classifier.safetensors"
        )
    if Path(out).is_dir():
        raise FairdiffError(
            f"--out {out}: is a directory; give a weights file such as {Path(out) / 'classifier.safetensors'}"
        )


def train_classifier(cfg: TrainClassifierConfig, out: Path) -> dict[str, float]:
    """Train on uniform renders, write `out` (safetensors) + `out.json` (config, held-out accuracy)."""
    from safetensors.torch import save as save_bytes

    out = Path(out)
    check_train_classifier(cfg, out)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_p, train_s = uniform_portraits(cfg.n_train, cfg.seed)
    test_p, test_s = uniform_portraits(cfg.n_test, cfg.seed + 10_000)
    x_train = images_to_tensor(render_batch(train_p, train_s))
    y_train = {a: torch.tensor([p.index(a) for p in train_p]) for a in ATTRIBUTES}
    test_images = render_batch(test_p, test_s)
    model = WorldClassifier(cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * (cfg.n_train // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(cfg.n_train, generator=gen)
        for i in range(cfg.n_train // cfg.batch_size):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            logits = model(_augment(x_train[idx], gen))
            loss = sum(F.cross_entropy(logits[a], y_train[a][idx]) for a in ATTRIBUTES)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        logger.info("epoch %d loss %.4f (%.0fs)", epoch, loss.item(), time.time() - t0)
    acc = accuracy(model, test_images, test_p)
    meta = {
        "config": asdict(cfg),
        "held_out_accuracy": acc,
        "train_seconds": round(time.time() - t0, 1),
        "attributes": {a: list(v) for a, v in ATTRIBUTES.items()},
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, save_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))
        write_atomic(sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as exc:
        raise FairdiffError(f"--out {out}: could not write the classifier ({exc.strerror or exc})") from None
    return acc


def load_classifier(path: str | Path | None = None) -> WorldClassifier:
    """Load the world classifier (bundled weights when `path` is None). A file that is not a world classifier
    (wrong keys or shapes, an unreadable sidecar) is one `FairdiffError` naming the file and the keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else BUNDLED_CLASSIFIER
    if not path.is_file():
        raise FairdiffError(f"world classifier {path}: no such file (train one with `fairdiff world train-classifier`)")
    meta_path = sidecar_path(path)
    width = 16
    if meta_path.is_file() and meta_path != path:
        try:
            width = json.loads(meta_path.read_text())["config"]["width"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise FairdiffError(
                f"world classifier {path}: its sidecar {meta_path} has no readable config.width ({exc!r})"
            ) from None
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 4096:
            raise FairdiffError(
                f"world classifier {path}: {meta_path}: config.width must be a whole number, got {width!r}"
            )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FairdiffError(f"world classifier {path}: not a readable safetensors file ({exc})") from None
    model = WorldClassifier(width)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise FairdiffError(
            f"world classifier {path}: not a world classifier's weights: "
            + "; ".join(
                f"{what} key(s) {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise FairdiffError(
            f"world classifier {path}: key {k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
            f" (width {width}; {len(wrong)} key(s) differ)"
        )
    model.load_state_dict(state)
    return model.eval()
