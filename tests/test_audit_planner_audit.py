"""The planner arm in a real audit: base + planner on a group suite, tiny model, 2 steps; the LLM planner through
a real local OpenAI-compatible server."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairdiff.audit.arms import arm_from_spec
from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.audit.store import read_rows
from fairdiff.audit.summary import summarize
from fairdiff.report.export import export_tables
from fairdiff.report.render import write_report

sys.path.insert(0, str(Path(__file__).parent / "scene"))
from scene_llm_server import ChatServer, reply  # noqa: E402  (the scene tests' server)

SUITE = """
name: tiny-groups
kind: group
images_per_prompt: 2
templates: ["a photo of {who}"]
values: {who: [three people, three dark-skinned women]}
scene: {mix: [skin=uniform]}
"""
ARMS = [{"kind": "base", "name": "base"}, {"kind": "planner", "name": "plan", "mix": ["skin=uniform"]}]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from fairdiff.detect import build_detector
    from fairdiff.models.loading import load_pipeline

    tmp = tmp_path_factory.mktemp("planner-audit")
    suite = tmp / "groups.yaml"
    suite.write_text(SUITE)
    cfg = AuditConfig(suites=[str(suite)], arms=ARMS, steps=2, batch_size=8)
    loaded, detector = load_pipeline("tiny"), build_detector("world", measure_accuracy=False)
    run_audit(cfg, tmp / "run", loaded=loaded, detector=detector)
    return tmp / "run", cfg, loaded, detector


def test_audit_stores_a_verified_layout_per_image_on_its_canvas(audited):
    run, *_ = audited
    rows = read_rows(run)
    assert len(rows) == 8 and all(r.scene is not None for r in rows)
    for r in rows:
        with Image.open(run / r.image) as im:
            assert im.size == (96, 32)  # three people in a row, 32 px each
        assert r.scene["planned_by"] == ("arm" if r.arm == "plan" else "reference")
        assert 0 <= r.scene["adherence"] <= 1 and 0 <= r.scene["mix_error"] <= 1
        assert len(r.scene["people"]) == 3 and r.scene["people_judged"] == 3
        if r.prompt_id == "three-dark-skinned-women":  # stated: never diversified, for either arm's layout
            assert {p["planned"]["skin"] for p in r.scene["people"]} == {"dark"}
            assert {p["planned"]["gender"] for p in r.scene["people"]} == {"woman"}
            assert r.scene["judged"] == ["gender", "skin"]
        else:
            assert r.scene["judged"] == ["skin"]
    plan = {r.seed: r.scene["layout"] for r in rows if r.arm == "plan" and r.prompt_id == "three-people"}
    base = {r.seed: r.scene["layout"] for r in rows if r.arm == "base" and r.prompt_id == "three-people"}
    assert plan == base  # same rules, mix and run seed: the base arm is measured against the planner's layout
    skins = [p["attributes"]["skin"] for lay in plan.values() for p in lay["people"]]
    assert sorted(Counter(skins).values()) == [1, 1, 2, 2]  # Hamilton's counts of 6 seats over 4 tones
    record = json.loads((run / "audit.json").read_text())
    assert record["arms"][1] == arm_from_spec(ARMS[1]).spec()
    assert record["suites"][0]["scene"]["mix"] == ["skin=uniform"]


def test_summary_csv_and_report_carry_adherence_and_mix_error(audited, tmp_path):
    run, *_ = audited
    results = load_run(run)
    summary = summarize(results, n_boot=50, frechet=False)
    s = summary.suites["tiny-groups"]
    overall = s.frame.overall.set_index("arm")
    rows = results.rows
    for arm in ("base", "plan"):
        mine = rows[rows["arm"] == arm]
        want = mine["people_as_planned"].sum() / mine["people_judged"].sum()
        assert overall.loc[arm, "adherence"] == pytest.approx(want)
        assert overall.loc[arm, "mix_error"] == pytest.approx(mine["mix_error"].mean())
        assert overall.loc[arm, "adherence_ci_low"] <= want <= overall.loc[arm, "adherence_ci_high"]
        assert overall.loc[arm, "images"] == 4 and overall.loc[arm, "people_judged"] == 12
    assert len(s.frame.by_prompt) == 4
    assert np.isnan(summary.quality["validity"]).all()  # group scenes are not portraits
    assert summary.to_dict()["suites"]["tiny-groups"]["overall"][0]["arm"] == "base"

    export_tables([run], tmp_path / "csv", n_boot=50)
    table = pd.read_csv(tmp_path / "csv" / "metrics-tiny-groups-overall.csv")
    assert {"adherence", "adherence_ci_low", "mix_error", "mix_error_ci_high", "mix_error_skin"} <= set(table.columns)
    assert table["adherence"].tolist() == pytest.approx(overall["adherence"].tolist())
    per_image = pd.read_csv(tmp_path / "csv" / "rows.csv")
    assert {"adherence", "mix_error", "scene_people"} <= set(per_image.columns)

    html = write_report([run], tmp_path / "report.html", n_boot=50).read_text()
    assert "adherence [95% CI]" in html and "mix error [95% CI]" in html
    assert html.count('class="thumbs scenes"') == 4  # per prompt and arm: the images with their boxes outlined
    assert "p1: planned " in html and ", seen " in html


def test_resume_redraws_nothing_and_keeps_the_scene_records(audited):
    run, cfg, loaded, detector = audited
    before = {r.job_key: (r.sha256, r.scene) for r in read_rows(run)}
    run_audit(cfg, run, resume=True, loaded=loaded, detector=detector)
    assert {r.job_key: (r.sha256, r.scene) for r in read_rows(run)} == before


def test_llm_planner_arm_asks_the_server_and_falls_back_to_the_rules(monkeypatch):
    monkeypatch.setenv("PLANNER_TEST_KEY", "sk-planner")
    spec = {
        "kind": "planner",
        "name": "llm",
        "mix": ["skin=uniform"],
        "planner": "llm",
        "llm": {"url": "http://127.0.0.1:9/v1", "model": "test-model", "key_env": "PLANNER_TEST_KEY", "retries": 0},
    }
    with ChatServer([reply('{"people": [ {"id": "p1", ')]) as server:
        spec["llm"]["url"] = server.url
        arm = arm_from_spec(spec)
        layouts = [arm.layout("a photo of four people", i, 2, 0) for i in range(2)]
    assert len(server.requests) == 2  # one per image, no retries
    assert server.requests[0]["auth"] == "Bearer sk-planner"
    assert "sk-planner" not in json.dumps(arm.spec())  # the key is read from the environment, never recorded
    for i, layout in enumerate(layouts):
        assert layout.planner.type == "rules" and "not valid JSON" in layout.planner.fallback
        assert layout.planner.model == "test-model"
        rules = arm_from_spec({**spec, "planner": "rules", "llm": None}).layout("a photo of four people", i, 2, 0)
        assert [p.attributes for p in layout.people] == [p.attributes for p in rules.people]  # exact counts kept
