"""The HTML report and the table export, on one small real audit (tiny model, 12 images, 2 steps) whose
prompts and negative prompt carry markup."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fairdiff.audit.results import load_run
from fairdiff.audit.runner import AuditConfig, run_audit
from fairdiff.audit.summary import summarize
from fairdiff.errors import FairdiffError
from fairdiff.report import export_tables, render_report, summarized_run, write_report
from fairdiff.report.charts import with_ci

SCRIPT = "<script>alert(1)</script>"
NEGATIVE = "revealing clothes <img src=x onerror=alert(2)>"
N_BOOT = 50
SHARES_SUITE = {
    "name": "xss-occupations",
    "kind": "shares",
    "world": True,
    "templates": [{"text": "a photo of the face of a {occupation} " + SCRIPT, "context": "photo"}],
    "measure": ["gender", "skin"],
    "values": {"occupation": ["doctor"]},
}
OUTCOME_SUITE = {
    "name": "xss-avatars",
    "kind": "outcome",
    "outcome": "revealing",
    "groups": ["gender", "skin"],
    "world": True,
    "templates": [{"text": "an avatar of a {skin} {gender} " + SCRIPT, "context": "avatar"}],
    "values": {"gender": ["man", "woman"], "skin": ["dark"]},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    suites = []
    for spec in (SHARES_SUITE, OUTCOME_SUITE):
        path = root / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        suites.append(str(path))
    arms = [{"kind": "base", "name": "base"}, {"kind": "negative", "name": "no-revealing", "negative": NEGATIVE}]
    cfg = AuditConfig(suites=suites, arms=arms, images_per_prompt=2, steps=2)
    run_audit(cfg, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def report(run_dir) -> tuple[Path, str]:
    out = write_report([run_dir], run_dir.parent / "out" / "report.html", n_boot=N_BOOT)
    return out, out.read_text(encoding="utf-8")


def test_prompts_and_settings_are_escaped(report):
    _, html = report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # headings, alt text, config
    assert "<script" not in html.lower()  # the report needs no script at all
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_report_is_self_contained(report):
    _, html = report
    assert "http://" not in html and "https://" not in html
    sources = re.findall(r'\bsrc="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'\bhref="([^"]*)"', html))
    assert "default-src 'none'" in html  # CSP: no network, no script even if markup slipped through


def test_report_shows_metrics_accuracy_images_and_config(report, run_dir):
    _, html = report
    for section in ("runs", "summary", "shares", "parity", "truth", "images", "configs"):
        assert f'<section id="{section}">' in html
    summary = summarize(load_run(run_dir), n_boot=N_BOOT, seed=0)
    overall = summary.suites["xss-occupations"].frame.overall.set_index(["arm", "attribute"])
    row = overall.loc[("no-revealing", "gender")]
    assert with_ci(row["mad"], row["mad_ci_low"], row["mad_ci_high"]) in html
    ratio = summary.suites["xss-avatars"].frame.ratio().set_index(["arm", "attribute"]).loc[("base", "gender")]
    assert with_ci(ratio["ratio"], ratio["ci_low"], ratio["ci_high"]) in html
    assert "world detector accuracy on world renders: gender 1.000 (n=" in html
    assert html.count("<img ") == 12  # 3 prompts x 2 arms x 2 seeds, all under the per-grid cap
    assert 'alt="a photo of the face of a doctor &lt;script&gt;alert(1)&lt;/script&gt; — seed 1"' in html
    assert "&#34;fairdiff_run&#34;: &#34;audit&#34;" in html  # audit.json, pretty-printed and escaped
    assert "CI covers truth" in html  # world suites: the truth-coverage table


def test_images_per_grid_caps_the_grid(run_dir, tmp_path):
    html = write_report([run_dir], tmp_path / "r.html", n_boot=N_BOOT, images_per_grid=1).read_text()
    assert html.count("<img ") == 6 and "(1 of 2)" in html


def test_a_run_summarized_already_reports_the_same_html(run_dir, report, tmp_path):
    # what `fairdiff demo` does: summarize once for the printout, then report from that summary
    summary = summarize(load_run(run_dir), n_boot=N_BOOT)
    out = render_report(summarized_run(run_dir, summary), tmp_path / "again.html")
    assert out.read_text(encoding="utf-8") == report[1]


def test_several_runs_label_arms_by_run_and_show_unmeasured_accuracy(run_dir, tmp_path):
    other = tmp_path / "unmeasured"
    shutil.copytree(run_dir, other)
    record = json.loads((other / "audit.json").read_text())
    record["detector"]["accuracy"] = {}
    (other / "audit.json").write_text(json.dumps(record))
    html = write_report([run_dir, other], tmp_path / "r.html", n_boot=N_BOOT).read_text()
    for label in ("run/base", "run/no-revealing", "unmeasured/base", "unmeasured/no-revealing"):
        assert f"<td>{label}</td>" in html
    assert "unmeasured: world detector accuracy: not measured" in html
    assert "run: world detector accuracy on world renders" in html
    assert html.count("<img ") == 24


def test_export_tables_writes_rows_and_metrics(run_dir, tmp_path):
    written = export_tables([run_dir, run_dir], tmp_path / "tables", n_boot=N_BOOT)
    names = {p.name for p in written}
    stems = ["rows", "quality", "metrics-xss-occupations-overall", "metrics-xss-avatars-ratio", "truth-xss-avatars"]
    for stem in stems:
        assert {f"{stem}.csv", f"{stem}.parquet"} <= names
    rows = pd.read_parquet(tmp_path / "tables" / "rows.parquet")
    assert len(rows) == 24 and rows.columns[0] == "run" and rows["run"].nunique() == 2
    assert set(rows["arm"]) == {"base", "no-revealing"}
    overall = pd.read_csv(tmp_path / "tables" / "metrics-xss-occupations-overall.csv")
    assert len(overall) == 2 * 2 * 2  # runs x arms x attributes
    assert set(json.loads((tmp_path / "tables" / "metrics.json").read_text())) == set(rows["run"])


def test_bad_run_dirs_raise_clear_errors(tmp_path):
    with pytest.raises(FairdiffError, match="at least one audit run dir"):
        write_report([], tmp_path / "r.html")
    with pytest.raises(FairdiffError, match="not an audit run dir"):
        write_report([tmp_path], tmp_path / "r.html")


def _chromium() -> str | None:
    """Debian's chromium (never a browser download); the test may skip without it only outside CI."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        reason = "headless Chromium test needs /usr/bin/chromium and the playwright package"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (.ci/run installs chromium; playwright is in the dev extra)")
        pytest.skip(reason)
    return path


def test_report_renders_in_headless_chromium(report):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    path, _ = report
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    args += ["--disable-sync", "--no-first-run"]
    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=args)
        try:
            page = browser.new_page()
            page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            assert page.locator("svg.fd-shares").count() == 2  # gender and skin for the one occupation prompt
            assert page.locator("svg.fd-parity").count() == 3  # gender, skin, gender×skin
            assert page.locator("svg.fd-chart g.fd-bar rect").count() > 0
            assert page.locator("svg.fd-chart").first.bounding_box()["width"] > 100
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert sizes and all(done and width == 32 for done, width in sizes)
            assert page.eval_on_selector_all("script", "els => els.length") == 0
            assert SCRIPT in page.locator("#shares h4").first.inner_text()  # shown as text, not run
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests)
