"""The plots page and the run report in a real browser with no network: every plot drew, no script failed.

Headless Chromium opens `dvc plots show`'s page, `dvc plots diff`'s between two experiments, and report/index.html
with every network name unresolvable, and the DOM after the scripts ran is checked plot by plot (tests/browser.py).
Skipped, with the reason, where there is no Chromium (.ci/install-chromium installs it).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import browser
from project import ENV, copy_of, copy_project, run, stages_ran

pytestmark = pytest.mark.slow


def dvc(cwd: Path, *args: str) -> str:
    return run(["dvc", *args], cwd, env=ENV).stdout


def plot_ids(cwd: Path, *diff_revs: str) -> list[str]:
    """The plots DVC draws (its JSON), for comparison with what the browser drew."""
    args = ["plots", "diff", *diff_revs, "--json"] if diff_revs else ["plots", "show", "--json"]
    document = json.loads(dvc(cwd, *args))
    assert not document.get("errors"), document["errors"]
    return [plot_id for plot_id, entries in document["data"].items() if entries[0]["type"] == "vega"]


def div_id(plot_id: str) -> str:
    """The id DVC gives a plot's div."""
    from dvc_render.base import Renderer

    return Renderer.remove_special_chars(plot_id)


def assert_every_plot_drew(page: browser.Page, expected: list[str]) -> dict:
    divs = browser.plot_divs(page.dom)
    assert sorted(divs) == sorted(div_id(p) for p in expected), (sorted(divs), expected)
    for plot_id, drawn in divs.items():
        assert drawn["status"] == "drawn" and drawn["svgs"] == 1 and drawn["drawn_marks"] >= 1, (plot_id, drawn)
    assert browser.page_errors(page.dom) == []
    assert page.script_errors == []
    return divs


def plots_page(cwd: Path) -> Path:
    output = dvc(cwd, "plots", "show")
    assert "file://" in output
    return cwd / "dvc_plots" / "index.html"


def test_the_plots_page_draws_every_plot_offline(pipeline, tmp_path):
    project = copy_of(pipeline[0], tmp_path / "project")
    # `dvc repro` ran the plots_template stage, which named its template in the local config.
    assert "plots_template/offline.html" in (project / ".dvc" / "config.local").read_text()
    page = plots_page(project)
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and not re.search(r'src="https?:', html)
    divs = assert_every_plot_drew(browser.open_page(page, tmp_path / "profile"), plot_ids(project))
    assert len(divs) == 8  # 3 curves, identity, confusion, 2 BN layers, transfer
    shot = browser.screenshot(page, tmp_path / "profile-shot", tmp_path / "plots.png")
    assert shot.stat().st_size > 50_000  # a blank page is a few kB

    # The report rewritten from the same inputs is byte-identical: git sees no change. Compared with a first
    # rewrite on this machine, not with the committed PNGs: vl-convert draws text with the system's Liberation Sans
    # where one is installed (Debian's fonts-liberation 1.07, which Chromium brings), else with its own.
    assert stages_ran(dvc(project, "repro", "-f", "-s", "report")) == ["report"]
    run(["git", "commit", "-qam", "report drawn here", "--allow-empty"], project)  # empty where the committed one was drawn here
    assert stages_ran(dvc(project, "repro", "-f", "-s", "report")) == ["report"]
    assert run(["git", "status", "--porcelain"], project).stdout == ""


def test_the_report_holds_the_tables_and_every_figure_offline(pipeline, tmp_path):
    project, _ = pipeline
    folder = project / "report"
    page = folder / "index.html"
    html = page.read_text()
    assert "<script" not in html and not re.search(r'(src|href)="https?:', html)
    for heading in ("Identity", "Accuracy", "Fine-tuning, last epoch", "Transfer to new classes",
                    "BN calibration per layer"):
        assert f"<h3>{heading}" in html
    assert "<code>max_abs_diff</code>" in html and "<td>fc1</td>" in html
    expected = plot_ids(project)
    opened = browser.open_page(page, tmp_path / "profile")
    figures = browser.figures(opened.dom)
    assert len(figures) == len(expected) == 8
    for label, drawn in figures.items():
        assert drawn["svgs"] == 1 and drawn["drawn_marks"] >= 1, (label, drawn)
    assert opened.console == []  # no script at all

    readme = (folder / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == 8 and all((folder / image).read_bytes()[:4] == b"\x89PNG" for image in images)
    assert "| fc1 | 128 |" in readme


def test_a_fresh_clone_shows_plots_before_repro_without_an_error_and_then_offline(tmp_path):
    """Before `dvc repro` the committed config names the fallback page: `dvc plots show` works, and offline the
    page says what to run; `vggbn plots-template` then makes the same page draw with no network."""
    project = copy_project(tmp_path / "clone")
    assert not (project / ".dvc" / "config.local").exists()
    page = plots_page(project)  # no "HTML template has to contain '{plot_divs}'"
    opened = browser.open_page(page, tmp_path / "profile-before")
    divs = browser.plot_divs(opened.dom)
    assert divs and {d["status"] for d in divs.values()} == {"not drawn"}
    assert re.search(r'<div id="vggbn-offline">', opened.dom)  # shown: its `hidden` attribute was removed
    assert "vggbn plots-template" in opened.dom

    output = run(["python", "-m", "vggbn.cli", "plots-template"], project, env=ENV).stdout
    assert "offline plots template written" in output and "config.local" in output
    assert_every_plot_drew(browser.open_page(plots_page(project), tmp_path / "profile-after"), plot_ids(project))
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # the template and dvc_plots are ignored


def test_plots_diff_of_two_experiments_and_their_report_draw_offline(pipeline, tmp_path):
    """The committed run (HEAD, finetune.lr 0.0001) beside one experiment: one training, two revisions."""
    project = copy_of(pipeline[0], tmp_path / "project")
    dvc(project, "exp", "run", "combine", "-n", "lr-1e-3", "-S", "finetune.lr=0.001")
    runs = ["HEAD", "lr-1e-3"]

    dvc(project, "plots", "diff", *runs)
    page = project / "dvc_plots" / "index.html"
    assert_every_plot_drew(browser.open_page(page, tmp_path / "profile"), plot_ids(project, *runs))
    assert "HEAD" in page.read_text() and "lr-1e-3" in page.read_text()

    out = tmp_path / "compare"
    printed = run(["python", "-m", "vggbn.cli", "report", *(f"--rev={name}" for name in runs), "--out", str(out)],
                  project, env=ENV).stdout
    assert printed.strip() == str(out / "index.html")
    html = (out / "index.html").read_text()
    assert "<th>HEAD</th><th>lr-1e-3</th>" in html.replace("\n", "")
    assert re.search(r"<td>finetune.lr</td><td>0.0001</td><td>0.0010</td>", html)
    assert "<td>combine: combined_accuracy</td>" in html
    figures = browser.figures(browser.open_page(out / "index.html", tmp_path / "profile-report").dom)
    assert len(figures) == 8 and all(f["svgs"] == 1 and f["drawn_marks"] >= 1 for f in figures.values())
    shutil.rmtree(out)
