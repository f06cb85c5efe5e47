"""The finetune arm: a fine-tuned pipeline directory audited beside base in one run, recorded by its weight hashes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.errors import FairdiffError
from fairdiff.mitigate.training import MitigateConfig, TrainPrompt, train_mitigation


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    loaded = load_pipeline("tiny")
    cfg = MitigateConfig(method="balanced", mode="finetune", steps=2, batch_size=2, lr=0.02, autocast="off")
    prompts = [TrainPrompt("a photo of the face of a doctor", {"occupation": "doctor"})]
    out = train_mitigation(cfg, "tiny", tmp_path_factory.mktemp("ft"), loaded=loaded, prompts=prompts)
    return loaded, build_detector("world", measure_accuracy=False), out


def _pixels(run_dir, arm: str) -> dict[str, np.ndarray]:
    rows = load_run(run_dir).rows
    rows = rows[rows["arm"] == arm]
    return {f"{p}/{s}": np.asarray(Image.open(run_dir / i)) for p, s, i in rows[["prompt", "seed", "image"]].values}


def test_finetune_pipeline_loads_as_model_and_as_an_arm_in_a_run(tmp_path, finetuned):
    from fairdiff.models.loading import load_pipeline

    loaded, detector, pipeline = finetuned
    assert load_pipeline(str(pipeline)).kind == "tiny"  # `--model out/pipeline`
    arms = [{"kind": "base", "name": "base"}, {"kind": "finetune", "name": "w", "pipeline": str(pipeline)}]
    cfg = dict(suites=["world-occupations"], images_per_prompt=2, max_prompts=1, steps=2, autocast="off")
    record = run_audit(AuditConfig(arms=arms, **cfg), tmp_path / "run", loaded=loaded, detector=detector)
    base, w = _pixels(tmp_path / "run", "base"), _pixels(tmp_path / "run", "w")
    assert base.keys() == w.keys() and len(w) == 2
    assert any(np.abs(base[k].astype(int) - w[k].astype(int)).max() > 0 for k in base)  # other weights, other images

    # the same images as an audit of the fine-tuned pipeline as the run's model
    alone = [{"kind": "base", "name": "w"}]
    run_audit(AuditConfig(arms=alone, model=str(pipeline), **cfg), tmp_path / "alone", detector=detector)
    assert all(np.array_equal(w[k], v) for k, v in _pixels(tmp_path / "alone", "w").items())

    spec = next(a for a in record["arms"] if a["name"] == "w")
    assert spec["pipeline"] == str(pipeline)
    assert "unet/diffusion_pytorch_model.safetensors" in spec["weight_hashes"]
    arm = arm_from_spec(spec)  # rebuilt from the run record: checks the hashes
    arm.check()
    assert arm.batch_key(None) != arm_from_spec({"kind": "base"}).batch_key(None)


def test_a_changed_or_missing_pipeline_is_one_error(tmp_path, finetuned):
    _, _, pipeline = finetuned
    spec = arm_from_spec({"kind": "finetune", "name": "w", "pipeline": str(pipeline)}).spec()
    key = "unet/diffusion_pytorch_model.safetensors"
    with pytest.raises(FairdiffError, match=f"weight file {key} differs"):
        arm_from_spec({**spec, "weight_hashes": {**spec["weight_hashes"], key: "0" * 64}}).check()
    with pytest.raises(FairdiffError, match="not a pipeline directory"):
        arm_from_spec({"kind": "finetune", "name": "w", "pipeline": str(tmp_path)})
