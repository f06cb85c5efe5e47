"""`fairdiff audit`: plan the jobs, draw them in batches, detect attributes, store one row per image.

The plan is a deterministic list of jobs, suite x prompt x arm x seed, each with a stable, readable key
(`suite/prompt/arm/seed`). Image i of every prompt and arm uses seed `seed + i`, so arms are compared on the
same noise. Under `torchrun`/`accelerate launch` (RANK, WORLD_SIZE set) rank r takes every WORLD_SIZE-th batch
and writes its own store; readers union the shards (`fairdiff audit merge` folds them into one file).
`resume=True` skips every job already in the store, so a killed run loses and duplicates nothing.

Group scenes (audit/arms_scene.py): a job of a planner arm, or of any arm in a `kind: group` suite, carries the
layout it is drawn from or measured against; it is drawn on that layout's canvas (batches hold one canvas size:
the size is part of the batch key) and its verification (the detector on every box crop) is stored beside its row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fairdiff.audit.arms import Arm, ArmRuntime, arm_from_spec, check_arms
from fairdiff.audit.arms_scene import scene_layout, scene_record
from fairdiff.audit.store import SCHEMA_VERSION, ImageRow, Store, store_files, store_path
from fairdiff.audit.suites import Suite, load_suite
from fairdiff.checks import check_seed
from fairdiff.errors import FairdiffError
from fairdiff.files import ensure_writable_dir, write_atomic, write_json_atomic
from fairdiff.images import png_bytes
from fairdiff.models.defaults import DEFAULT_AUTOCAST, DEFAULT_STEPS, check_autocast
from fairdiff.models.sampling import ImageOptions, SamplingRequest

logger = logging.getLogger(__name__)

CONFIG_NAME = "audit.json"


@dataclass
class AuditConfig:
    model: str = "tiny"
    suites: list[str] = field(default_factory=lambda: ["world-occupations"])
    arms: list[dict] = field(default_factory=lambda: [{"kind": "base", "name": "base"}])
    detector: str = "world"
    detector_options: dict = field(default_factory=dict)
    images_per_prompt: int | None = None  # None: each suite's own number
    max_prompts: int | None = None  # first N prompts of each suite (quick looks)
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance: float | None = None  # None: the pipeline's default (tiny 3.0, SD 7.5)
    autocast: str = DEFAULT_AUTOCAST  # bf16 autocast: auto (where the CPU runs bf16 natively), on, off
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    world: str | None = None  # world config YAML for world suites' truth (None: the default world)

    def check(self) -> None:
        check_autocast(self.autocast)
        for name, v in (("--steps", self.steps), ("--batch-size", self.batch_size)):
            if v < 1:
                raise FairdiffError(f"{name} must be >= 1, got {v}")
        if self.images_per_prompt is not None and self.images_per_prompt < 1:
            raise FairdiffError(f"-n/--images-per-prompt must be >= 1, got {self.images_per_prompt}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise FairdiffError(f"--max-prompts must be >= 1, got {self.max_prompts}")
        if self.guidance is not None and not (np.isfinite(self.guidance) and self.guidance >= 0):
            raise FairdiffError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if not self.suites:
            raise FairdiffError("an audit needs at least one suite")

    def fingerprint(self, suites: list[Suite] | None = None, adapter_hashes: dict | None = None) -> str:
        """What must not change between a run and its resume: every option that changes the images or labels,
        and the contents (not the names) of the suites, the world config and the adapter files."""
        # paths are left out (a resume may spell a file another way, or run from another folder): the suites'
        # prompts, the world config's text and each adapter's hash stand for them. batch_size stays in: it decides
        # which jobs share a forward (and so which rank of a sharded run draws which job), and a batch's shape can
        # change CPU kernels and so the bytes of an image
        keep = {k: v for k, v in asdict(self).items() if k not in ("device", "suites", "world")}
        if self.world:
            keep["world_text"] = Path(self.world).read_text() if Path(self.world).is_file() else None
        keep["suites_spec"] = [{k: v for k, v in s.spec().items() if k != "source"} for s in suites or []]
        keep["arms"] = [_adapters_by_hash(a, adapter_hashes or {}) for a in self.arms]
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _adapters_by_hash(arm: dict, hashes: dict[str, str]) -> dict:
    """An arm's spec with each adapter "FILE[:WEIGHT]" as "SHA256:WEIGHT" (the file's path as given if unhashed)."""
    if not arm.get("adapters"):
        return arm
    from fairdiff.adapters.engine import parse_adapter_spec

    specs = [parse_adapter_spec(t) for t in arm["adapters"]]
    return {**arm, "adapters": [f"{hashes.get(str(s.path), str(s.path))}:{s.weight!r}" for s in specs]}


@dataclass(frozen=True)
class Job:
    """One image of the plan: what the arm's `image_options` gave for image `index` of a suite prompt."""

    key: str
    suite: str
    prompt_id: str
    arm: str
    seed: int
    prompt: str  # as the arm draws it (`-term`s moved to the negative prompt, the arm's own changes)
    negative: str
    guidance: float | None = None  # the arm's; None: the run's (cfg.guidance, else the pipeline's default)
    index: int = 0  # image index within the prompt and arm
    layout: Any = field(default=None, hash=False)  # group scenes: the `Layout` drawn (planner arms) or measured
    # against (other arms in a `kind: group` suite); pydantic models do not hash, so it is left out of the hash
    planned_by: str = ""  # "arm" | "reference" (see audit/arms_scene.py), "" without a layout

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the image: the layout's canvas; None: the pipeline's default."""
        return None if self.layout is None else (self.layout.canvas.height, self.layout.canvas.width)

    def options(self, run_guidance: float | None) -> ImageOptions:
        """The sampling options of this image, the run's guidance filled in."""
        guidance = self.guidance if self.guidance is not None else run_guidance
        return ImageOptions(prompt=self.prompt, negative=self.negative, seed=self.seed, guidance=guidance)


def build_plan(suites: list[Suite], arms: list[Arm], cfg: AuditConfig) -> list[Job]:
    """Suite x prompt x arm x image index, in that order; image i has the plan seed `cfg.seed + i`, and the arm
    says what it is drawn with (`Arm.image_options`). Keys are `suite/prompt/arm/seed`, with the seed drawn.
    Group-scene jobs get their layout (`arms_scene.scene_layout`: image i of the prompt's n, run seed `cfg.seed`)."""
    jobs, keys = [], set()
    for suite in suites:
        n = cfg.images_per_prompt or suite.images_per_prompt
        for p in suite.prompts[: cfg.max_prompts]:
            for arm in arms:
                for i in range(n):
                    opts = arm.image_options(p.text, "", i, cfg.seed + i)
                    check_seed(opts.seed, option=f"arm {arm.name}: seed of image {i} of prompt {p.id}")
                    key = f"{suite.name}/{p.id}/{arm.name}/{opts.seed}"
                    if key in keys:
                        raise FairdiffError(f"arm {arm.name} gives two images of prompt {p.id} the seed {opts.seed}")
                    keys.add(key)
                    layout, planned_by = scene_layout(arm, suite, p.text, i, n, cfg.seed)
                    job = Job(
                        key, suite.name, p.id, arm.name, opts.seed, opts.prompt, opts.negative, opts.guidance, i,
                        layout, planned_by,
                    )  # fmt: skip
                    jobs.append(job)
    return jobs


def shard_batches(jobs: list[Job], arms: dict[str, Arm], cfg: AuditConfig, rank: int, world_size: int):
    """Batches of jobs that may share a forward (same batch key and image size), in plan order; rank r takes every
    world_size-th batch, so shards are balanced and deterministic."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((*arms[job.arm].batch_key(cfg.guidance), job.size), []).append(job)
    batches = []
    for key, group in groups.items():
        for i in range(0, len(group), cfg.batch_size):
            batches.append((key, group[i : i + cfg.batch_size]))
    return batches[rank::world_size]


def dist_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun / accelerate launch environment variables; (0, 1) otherwise."""
    try:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise FairdiffError("RANK/WORLD_SIZE must be integers") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise FairdiffError(f"RANK={rank} WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE")
    return rank, world_size


def resolve_device(device: str) -> str:
    """Under torchrun, `cuda` means this rank's GPU (LOCAL_RANK), so K ranks use K GPUs, not one."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return f"cuda:{int(local)}"
    return device


def prepare_run_dir(out: Path, cfg: AuditConfig, resume: bool, fingerprint: str | None = None) -> dict | None:
    """Check `out` is new (or, with resume, was written by this config and store schema). Ranks of a sharded
    run share `out`: whichever starts second finds the config of the first, which is fine if it matches."""
    config_file = out / CONFIG_NAME
    if config_file.exists():
        if not resume and dist_rank()[1] == 1:
            raise FairdiffError(f"--out {out} holds an audit already; pass --resume to continue it or a new --out")
        try:
            old = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FairdiffError(f"{config_file}: unreadable ({exc})") from None
        if old.get("store_schema") != SCHEMA_VERSION:
            raise FairdiffError(
                f"{out} was written by fairdiff {old.get('versions', {}).get('fairdiff', '?')} with store schema "
                f"{old.get('store_schema')}; this one writes {SCHEMA_VERSION}: audit into a new --out"
            )
        if fingerprint is not None and old.get("fingerprint") != fingerprint:
            raise FairdiffError(
                f"{out} was audited with a different config (options, suite, world or adapter contents); "
                f"--resume needs the same ones"
            )
        return old
    ensure_writable_dir(out)
    return None


def check_audit(cfg: AuditConfig) -> tuple[list[Arm], list[Suite]]:
    """Validate everything about an audit that can be checked without loading a model."""
    from fairdiff.detect.registry import check_detector_options
    from fairdiff.world.config import load_world_config

    cfg.check()
    arms = [arm_from_spec(s) for s in cfg.arms]
    check_arms(arms)
    world = load_world_config(cfg.world) if cfg.world else None
    suites = [load_suite(s, world) for s in cfg.suites]
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise FairdiffError(f"suites must be distinct, got {names}")
    check_detector_options(cfg.detector, cfg.detector_options)  # unknown names and options, before any model loads
    return arms, suites


def adapter_file_hashes(arms: list[Arm]) -> dict[str, dict]:
    """sha256 of every adapter file the arms use (part of the resume fingerprint)."""
    from fairdiff.adapters.engine import adapter_record, parse_adapter_spec

    paths = {str(parse_adapter_spec(t).path) for arm in arms for t in getattr(arm, "adapters", [])}
    return {p: adapter_record(parse_adapter_spec(p))["sha256"] for p in sorted(paths)}


def check_detector_fits(detector, suites: list[Suite]) -> None:
    """Every outcome a suite asks for is one the detector gives; every measured attribute is detected."""
    for suite in suites:
        if suite.kind == "outcome" and suite.outcome not in detector.outcomes:
            have = ", ".join(detector.outcomes) or "none"
            raise FairdiffError(
                f"suite {suite.name} measures the outcome {suite.outcome!r}; detector {detector.name} gives {have} "
                f"(the world detector and nudenet give 'revealing')"
            )
        for attribute, mix in suite.target.items():
            unknown = sorted(set(mix) - set(detector.classes.get(attribute, [])))
            if attribute in detector.classes and unknown:
                raise FairdiffError(
                    f"suite {suite.name}: target.{attribute} names {', '.join(unknown)}; detector {detector.name} "
                    f"has classes {', '.join(detector.classes[attribute])}"
                )
        missing = [a for a in suite.measure if a not in detector.classes]
        if missing:
            raise FairdiffError(
                f"suite {suite.name} measures {', '.join(missing)}; detector {detector.name} detects "
                f"{', '.join(detector.classes)}"
            )


def run_audit(
    cfg: AuditConfig,
    out: Path,
    resume: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    loaded=None,
    detector=None,
) -> dict:
    """Run (or resume) an audit into `out`; returns the run record (also written to `out/audit.json`)."""
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline
    from fairdiff.models.sampling import autocast_used, effective_guidance
    from fairdiff.provenance import library_versions, machine

    arms, suites = check_audit(cfg)
    rank, world_size = dist_rank()
    fingerprint = cfg.fingerprint(suites, adapter_file_hashes(arms))
    old = prepare_run_dir(out, cfg, resume, fingerprint)

    loaded = loaded or load_pipeline(cfg.model, device=resolve_device(cfg.device), dtype=cfg.dtype)
    if detector is None:
        import inspect

        from fairdiff.detect.registry import detector_factory

        options = dict(cfg.detector_options)
        params = inspect.signature(detector_factory(cfg.detector)).parameters
        if "device" in params and "device" not in options:
            options["device"] = resolve_device(cfg.device)  # a CLIP detector runs where the model runs
        detector = build_detector(cfg.detector, **options)
    check_detector_fits(detector, suites)
    runtime = ArmRuntime(loaded)
    for arm in arms:
        arm.setup(runtime)
    runtime.attach()

    jobs = build_plan(suites, arms, cfg)
    record = {
        "fairdiff_run": "audit",
        "store_schema": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "suites": [s.spec() for s in suites],
        "truth": {s.name: {p.id: p.truth for p in s.prompts if p.truth} for s in suites},
        "arms": [a.spec() for a in arms],
        "plan": {"jobs": len(jobs), "seeds": sorted({j.seed for j in jobs}), "world_size": world_size},
        "model": {"name": loaded.name, "kind": loaded.kind, "source": loaded.source},
        "guidance": effective_guidance(loaded, cfg.guidance),
        "bf16_autocast": autocast_used(loaded, cfg.autocast),
        "scheduler": {"class": type(loaded.pipeline.scheduler).__name__},
        "detector": detector.describe(),
        "versions": library_versions(),
        "machine": machine(),
        "weight_hashes": loaded.weight_hashes(),
        "adapter_hashes": runtime.adapter_hashes,
    }
    if old is None and rank == 0:
        try:
            write_json_atomic(out / CONFIG_NAME, record)
        except OSError as exc:
            raise FairdiffError(f"could not write {out / CONFIG_NAME} ({exc.strerror or exc})") from None

    arm_by_name = {a.name: a for a in arms}
    batches = shard_batches(jobs, arm_by_name, cfg, rank, world_size)
    try:
        _draw(out, cfg, loaded, detector, runtime, arm_by_name, batches, rank, world_size, on_progress)
    finally:
        if runtime.handle is not None:
            runtime.handle.detach()  # the pipeline is the caller's: give back its original layers
    return record


def _draw(out, cfg, loaded, detector, runtime, arm_by_name, batches, rank, world_size, on_progress) -> None:
    """Draw, detect and store every batch of this rank that the store does not hold yet."""
    from fairdiff.models import sampling

    done: set[str] = set()
    for path in store_files(out):  # jobs any rank or earlier run (any world size) already stored
        if path != store_path(out, rank, world_size):
            with Store(path, create=False) as other:
                done |= other.done_keys()
    with Store(store_path(out, rank, world_size)) as store:
        done |= store.done_keys()
        todo = [(k, [j for j in b if j.key not in done]) for k, b in batches]
        todo = [(k, b) for k, b in todo if b]
        total = sum(len(b) for _, b in batches)
        finished = total - sum(len(b) for _, b in todo)
        if on_progress:
            on_progress(finished, total)
        for _, batch in todo:
            t0 = time.perf_counter()
            runtime.activate([arm_by_name[j.arm] for j in batch])
            arm = arm_by_name[batch[0].arm]  # every arm of a batch shares its batch key: one model, one hook
            with arm.sampling(runtime, batch) as extra:
                options = [j.options(cfg.guidance) for j in batch]
                height, width = batch[0].size or (None, None)
                request = SamplingRequest(
                    options, steps=cfg.steps, height=height, width=width, autocast=cfg.autocast, **extra
                )
                pixels = sampling.draw(arm.model(runtime), request)
            scenes: list[dict | None] = [None] * len(batch)
            if batch[0].layout is None:
                probs = detector(pixels)
            else:  # the detector on every box crop; the row's probabilities from them (audit/arms_scene.py)
                per_image = [
                    scene_record(img, j.layout, detector, j.planned_by) for j, img in zip(batch, pixels, strict=True)
                ]
                scenes = [record for record, _ in per_image]
                probs = {a: np.asarray([row[a] for _, row in per_image]) for a in per_image[0][1]}
            seconds = (time.perf_counter() - t0) / len(batch)
            rows = []
            for i, (job, img) in enumerate(zip(batch, pixels, strict=True)):
                rel = Path("images") / job.suite / job.prompt_id / job.arm / f"{job.seed:06d}.png"
                data = png_bytes(img)
                try:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(out / rel, data)
                except OSError as exc:  # disk full, quota, permissions: nothing of this batch is committed
                    raise FairdiffError(
                        f"could not write {out / rel} ({exc.strerror or exc}); the store holds every batch "
                        f"before this one intact: free space, then rerun with --resume"
                    ) from None
                rows.append(
                    ImageRow(
                        job_key=job.key,
                        suite=job.suite,
                        prompt_id=job.prompt_id,
                        arm=job.arm,
                        seed=job.seed,
                        prompt=job.prompt,
                        negative=job.negative,
                        image=rel.as_posix(),
                        sha256=hashlib.sha256(data).hexdigest(),
                        probs={a: [round(float(x), 6) for x in p[i]] for a, p in probs.items()},
                        rank=rank,
                        seconds=seconds,
                        scene=scenes[i],
                    )
                )
            store.add(rows)
            finished += len(batch)
            if on_progress:
                on_progress(finished, total)
