from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.runner import AuditConfig, build_plan, run_audit
from fairdiff.audit.store import STORE_NAME, Store, merge_stores, read_rows
from fairdiff.audit.suites import load_suite
from fairdiff.errors import FairdiffError

ARMS = [{"kind": "base", "name": "base"}, {"kind": "negative", "name": "no-revealing", "negative": "revealing clothes"}]


def _cfg(**kw) -> AuditConfig:
    base = dict(suites=["world-occupations"], arms=ARMS, images_per_prompt=3, max_prompts=2, steps=2, batch_size=4)
    return AuditConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny():
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    return load_pipeline("tiny"), build_detector("world", measure_accuracy=False)


def _run(cfg, out, tiny, **kw):
    loaded, detector = tiny
    return run_audit(cfg, out, loaded=loaded, detector=detector, **kw)


def _sig(run_dir: Path) -> dict[str, str]:
    return {r.job_key: r.sha256 for r in read_rows(run_dir)}


def test_plan_is_deterministic_with_stable_keys_and_paired_seeds():
    cfg = _cfg()
    suites = [load_suite("world-occupations")]
    arms = [arm_from_spec(a) for a in ARMS]
    a, b = build_plan(suites, arms, cfg), build_plan(suites, arms, cfg)
    assert a == b and len(a) == 2 * 2 * 3
    assert a[0].key == "world-occupations/doctor/base/0"
    by_arm = {arm.name: [j.seed for j in a if j.arm == arm.name] for arm in arms}
    assert by_arm["base"] == by_arm["no-revealing"]  # arms are compared on the same noise
    neg = next(j for j in a if j.arm == "no-revealing")
    assert neg.negative == "revealing clothes" and neg.prompt == "a photo of the face of a doctor"


def test_run_dir_records_everything_and_resume_adds_nothing(tmp_path, tiny):
    out = tmp_path / "run"
    record = _run(_cfg(), out, tiny)
    saved = json.loads((out / "audit.json").read_text())
    for key in ("config", "suites", "arms", "plan", "versions", "machine", "weight_hashes", "detector", "truth"):
        assert key in saved, key
    assert saved["plan"]["seeds"] == [0, 1, 2] and record["fingerprint"] == saved["fingerprint"]
    first = _sig(out)
    assert len(first) == 12 and all((out / r.image).is_file() for r in read_rows(out))
    with pytest.raises(FairdiffError, match="pass --resume"):
        _run(_cfg(), out, tiny)
    _run(_cfg(), out, tiny, resume=True)
    assert _sig(out) == first
    with pytest.raises(FairdiffError, match="different config"):
        _run(_cfg(steps=3), out, tiny, resume=True)


def test_same_config_same_images_and_numbers(tmp_path, tiny):
    _run(_cfg(batch_size=12), tmp_path / "a", tiny)
    _run(_cfg(batch_size=12), tmp_path / "b", tiny)
    assert _sig(tmp_path / "a") == _sig(tmp_path / "b")
    pa = {r.job_key: r.probs for r in read_rows(tmp_path / "a")}
    assert pa == {r.job_key: r.probs for r in read_rows(tmp_path / "b")}


def test_incompatible_run_dir_is_refused(tmp_path, tiny):
    out = tmp_path / "run"
    _run(_cfg(images_per_prompt=1, max_prompts=1), out, tiny)
    record = json.loads((out / "audit.json").read_text())
    record["store_schema"] = 0
    (out / "audit.json").write_text(json.dumps(record))
    with pytest.raises(FairdiffError, match="store schema 0"):
        _run(_cfg(images_per_prompt=1, max_prompts=1), out, tiny, resume=True)


def _audit_cmd(out: Path, *extra: str) -> list[str]:
    code = "import sys; from fairdiff.cli import app; sys.exit(app())"
    args = ["audit", "-s", "world-occupations", "--negative", "revealing clothes", "-n", "6", "--max-prompts", "2"]
    return [sys.executable, "-c", code, *args, "--steps", "2", "--batch-size", "2", "--out", str(out), *extra]


def _env(**kw) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **kw}


@pytest.fixture()
def one_thread():
    """Subprocesses run with one thread; float sums (and so PNG bytes) depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLI_CFG = dict(
    arms=[{"kind": "base", "name": "base"}, {"kind": "negative", "name": "negative", "negative": "revealing clothes"}],
    images_per_prompt=6,
    batch_size=2,
)


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, tiny, one_thread):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_audit_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (out / STORE_NAME).is_file():
                with Store(out / STORE_NAME) as s:
                    if s.count() >= 4:
                        break
            time.sleep(0.05)
        else:
            pytest.fail("the audit subprocess stored nothing in 120 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with Store(out / STORE_NAME) as s:
        partial = s.count()
        assert s.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert 4 <= partial < 24
    cfg = _cfg(**CLI_CFG)
    _run(cfg, out, tiny, resume=True)
    _run(cfg, tmp_path / "clean", tiny)
    killed, clean = _sig(out), _sig(tmp_path / "clean")
    assert len(killed) == 24 and killed == clean  # nothing lost, nothing duplicated, same images
    with Store(out / STORE_NAME) as s:
        assert s.count() == 24


def test_two_ranks_shard_then_merge_equals_one_process(tmp_path, tiny, one_thread):
    out = tmp_path / "sharded"
    procs = [
        subprocess.Popen(
            _audit_cmd(out), env=_env(RANK=str(r), WORLD_SIZE="2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    shards = [Store(out / f"store-rank{r}.sqlite") for r in range(2)]
    counts = [s.count() for s in shards]
    keys = [s.done_keys() for s in shards]
    for s in shards:
        s.close()
    assert sum(counts) == 24 and counts[0] > 0 and counts[1] > 0 and not keys[0] & keys[1]
    assert merge_stores(out) == 24
    _run(_cfg(**CLI_CFG), tmp_path / "single", tiny)
    assert _sig(out) == _sig(tmp_path / "single")
    assert (out / "audit.json").is_file()


def test_disk_full_mid_batch_is_one_clear_error_and_the_store_stays_intact(tmp_path, tiny, monkeypatch):
    import errno

    import fairdiff.audit.runner as runner

    real, writes = runner.write_atomic, []

    def failing(path, data):
        writes.append(path)
        if len(writes) == 7:  # inside the second batch of 4
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(runner, "write_atomic", failing)
    out = tmp_path / "run"
    with pytest.raises(FairdiffError, match="No space left on device.*rerun with --resume"):
        _run(_cfg(), out, tiny)
    with Store(out / STORE_NAME) as s:
        assert s.count() == 4  # the first batch, whole; nothing of the failed one
        assert s.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    monkeypatch.setattr(runner, "write_atomic", real)
    _run(_cfg(), out, tiny, resume=True)
    assert len(_sig(out)) == 12


def test_a_detector_without_the_suites_outcome_is_refused(tmp_path, tiny):
    loaded, detector = tiny

    class GenderOnly(type(detector)):
        outcomes = {}

        def __init__(self):
            self.classes, self.accuracy, self.name = {"gender": ["man", "woman"]}, {}, "gender-only"

    with pytest.raises(FairdiffError, match="measures the outcome 'revealing'; detector gender-only gives none"):
        run_audit(_cfg(suites=["world-avatars"]), tmp_path / "a", loaded=loaded, detector=GenderOnly())
    with pytest.raises(FairdiffError, match="measures skin, age; detector gender-only detects gender"):
        run_audit(_cfg(), tmp_path / "b", loaded=loaded, detector=GenderOnly())


def test_resume_skips_jobs_any_store_of_the_run_dir_holds(tmp_path, tiny, monkeypatch):
    # rank 1 of 2 ran; a one-process --resume must draw only what no store holds
    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    _run(_cfg(), out, tiny)
    shard = _sig(out)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    _run(_cfg(), out, tiny, resume=True)
    with Store(out / STORE_NAME) as s:
        assert s.count() == 12 - len(shard) and not s.done_keys() & set(shard)
    assert len(_sig(out)) == 12


def test_bad_rank_environment_is_refused(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FairdiffError, match="need 0 <= RANK < WORLD_SIZE"):
        _run(_cfg(), tmp_path / "run", tiny)


def test_resume_refuses_a_changed_suite_file(tmp_path, tiny):
    suite = tmp_path / "mine.yaml"
    text = "name: mine\ntemplates: ['a photo of the face of a {o}']\nmeasure: [gender]\nvalues: {o: [doctor]}\n"
    suite.write_text(text)
    cfg = _cfg(suites=[str(suite)], images_per_prompt=1)
    _run(cfg, tmp_path / "run", tiny)
    suite.write_text(text.replace("[doctor]", "[doctor, nurse]"))  # same name, other prompts
    with pytest.raises(FairdiffError, match="different config"):
        _run(cfg, tmp_path / "run", tiny, resume=True)


def test_a_target_naming_classes_the_detector_lacks_is_refused_before_drawing(tmp_path, tiny):
    suite = tmp_path / "t.yaml"
    suite.write_text(
        "name: t\ntemplates: ['a {o}']\nmeasure: [gender]\ntarget: {gender: {male: 0.5, female: 0.5}}\n"
        "values: {o: [doctor]}\n"
    )
    with pytest.raises(FairdiffError, match="target.gender names female, male; detector world has classes man, woman"):
        _run(_cfg(suites=[str(suite)]), tmp_path / "run", tiny)
    assert not (tmp_path / "run" / STORE_NAME).exists()


def test_resume_fingerprint_is_about_contents_not_paths(tmp_path, monkeypatch):
    """A resume may spell the suite or adapter file another way, or run from another folder."""
    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\ntemplates: ['a {x}']\nmeasure: [gender]\nvalues: {x: [cook]}\n")
    monkeypatch.chdir(tmp_path)

    def fingerprint(suite_path: str, adapter_path: str, weight: str = "0.5") -> str:
        arm = {"kind": "adapter", "name": "a", "adapters": [f"{adapter_path}:{weight}"]}
        cfg = AuditConfig(suites=[suite_path], arms=[arm])
        return cfg.fingerprint([load_suite(suite_path)], {adapter_path: "ab12"})

    same = {
        fingerprint(s, a) for s in ("mine.yaml", "./mine.yaml", str(suite)) for a in ("x.st", str(tmp_path / "x.st"))
    }
    assert len(same) == 1
    assert fingerprint("mine.yaml", "x.st", weight="0.7") not in same
    suite.write_text("name: mine\ntemplates: ['a {x}']\nmeasure: [gender]\nvalues: {x: [chef]}\n")
    assert fingerprint("mine.yaml", "x.st") not in same


def test_batch_size_is_part_of_the_resume_fingerprint(tmp_path, tiny, monkeypatch):
    """Ranks with different batch sizes cut the plan into different batches, so rank r's every-WORLD_SIZE-th
    batch overlaps another rank's: the same job drawn twice and others by no one. And a batch's shape can change
    CPU/GPU kernels, hence bytes. So a rank or a resume with another --batch-size is refused."""
    from fairdiff.audit.runner import shard_batches

    suites = [load_suite("world-occupations")]
    arms = {a["name"]: arm_from_spec(a) for a in ARMS}
    jobs = build_plan(suites, list(arms.values()), _cfg())
    keys = lambda cfg, rank: {j.key for _, b in shard_batches(jobs, arms, cfg, rank, 2) for j in b}  # noqa: E731
    assert keys(_cfg(batch_size=4), 0) & keys(_cfg(batch_size=3), 1)  # the hazard: one job on both ranks

    assert _cfg(batch_size=4).fingerprint(suites) != _cfg(batch_size=3).fingerprint(suites)
    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    _run(_cfg(batch_size=4), out, tiny)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(FairdiffError, match="different config"):
        _run(_cfg(batch_size=3), out, tiny)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(FairdiffError, match="different config"):
        _run(_cfg(batch_size=3), out, tiny, resume=True)
    _run(_cfg(batch_size=4), out, tiny, resume=True)  # the same batch size resumes
    assert len(_sig(out)) == 12


def test_arms_give_each_image_its_options_and_the_base_arm_is_unchanged():
    from fairdiff.audit.arms import Arm, NegativeArm
    from fairdiff.models.prompts import split_negative_terms
    from fairdiff.models.sampling import ImageOptions

    text = 'a photo of a nurse -revealing -"bare shoulders"'
    positive, negative = split_negative_terms(text, "")
    assert Arm(guidance=2.0).image_options(text, "", 3, 7) == ImageOptions(positive, negative, 7, 2.0)
    neg = NegativeArm(name="n", negative="smiling").image_options(text, "", 0, 0)
    assert (neg.prompt, neg.negative, neg.guidance) == (positive, f"{negative}, smiling", None)

    # the plan as it was built before arms saw the image index: one conditioning per prompt and arm, seed + i
    cfg, suites = _cfg(seed=5), [load_suite("world-occupations")]
    arms = [arm_from_spec(a) for a in ARMS]
    old = []
    for p in suites[0].prompts[: cfg.max_prompts]:
        for arm in arms:
            positive, negative = split_negative_terms(p.text, "")
            negative = ", ".join(t for t in (negative, getattr(arm, "negative", "")) if t)
            old += [(f"world-occupations/{p.id}/{arm.name}/{5 + i}", 5 + i, positive, negative) for i in range(3)]
    assert [(j.key, j.seed, j.prompt, j.negative) for j in build_plan(suites, arms, cfg)] == old


def test_an_arm_can_plan_its_images_by_index(tmp_path, tiny, monkeypatch):
    """A quota-style arm: image i of a prompt gets another prompt and guidance by its index; the runner carries
    the per-image options into the request, and the images are those the options draw."""
    from dataclasses import dataclass, replace

    import numpy as np
    from PIL import Image

    import fairdiff.models.sampling as sampling
    from fairdiff.audit.arms import Arm
    from fairdiff.models.sampling import ImageOptions, SamplingRequest

    @dataclass
    class QuotaArm(Arm):
        name: str = "quota"

        def check(self) -> None:  # a kind without a spec model in audit/arm_specs.py
            pass

        def image_options(self, prompt, negative, index, seed):
            opts = super().image_options(prompt, negative, index, seed)
            return replace(opts, prompt=f"{opts.prompt}, a woman", guidance=1.0) if index % 2 else opts

    import fairdiff.audit.runner as runner

    real_spec = runner.arm_from_spec
    monkeypatch.setattr(runner, "arm_from_spec", lambda s: QuotaArm() if s["kind"] == "test-quota" else real_spec(s))
    requests = []
    real = sampling.draw
    monkeypatch.setattr(sampling, "draw", lambda loaded, r: requests.append(r) or real(loaded, r))
    cfg = _cfg(arms=[{"kind": "test-quota", "name": "quota"}], images_per_prompt=2, max_prompts=1, batch_size=2)
    _run(cfg, tmp_path / "run", tiny)
    (request,) = requests
    doctor = "a photo of the face of a doctor"
    assert [(o.prompt, o.seed, o.guidance) for o in request.images] == [
        (doctor, 0, None),
        (f"{doctor}, a woman", 1, 1.0),
    ]
    rows = sorted(read_rows(tmp_path / "run"), key=lambda r: r.seed)
    assert [r.prompt for r in rows] == [doctor, f"{doctor}, a woman"]
    alone = real(tiny[0], SamplingRequest([ImageOptions(f"{doctor}, a woman", "", 1, 1.0)], steps=2))[0]
    stored = np.asarray(Image.open(tmp_path / "run" / rows[1].image), dtype=int)
    assert np.abs(stored - alone.astype(int)).max() <= 1  # image 1 is its own options' image (batch-shape kernels)


def test_an_arm_seed_outside_64_bits_or_twice_is_refused():
    from dataclasses import dataclass, replace

    from fairdiff.audit.arms import Arm

    @dataclass
    class Shifted(Arm):
        shift: int = 0

        def image_options(self, prompt, negative, index, seed):
            return replace(super().image_options(prompt, negative, index, seed), seed=seed + self.shift)

    suites = [load_suite("world-occupations")]
    with pytest.raises(FairdiffError, match="arm base: seed of image 0 of prompt doctor"):
        build_plan(suites, [Shifted(shift=-1)], _cfg())
    with pytest.raises(FairdiffError, match="2\\*\\*64"):
        build_plan(suites, [Shifted(shift=2**64)], _cfg())

    @dataclass
    class Same(Arm):
        def image_options(self, prompt, negative, index, seed):
            return replace(super().image_options(prompt, negative, index, seed), seed=0)

    with pytest.raises(FairdiffError, match="the seed 0"):
        build_plan(suites, [Same()], _cfg())
