"""The offline page template for `dvc plots show`: inlined Vega that survives DVC's placeholder replacement, its
license notice, the committed fallback page, and where DVC's config points."""

import subprocess
from pathlib import Path

import pytest

from vggbn.pages import plots_template
from vggbn.pages.plots_template import PlotsTemplateError, config_value, page_template

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "window.vegaEmbed=function(){};/* a stand-in for the real bundle */"


def fill(template: str, divs: str = "<div id='p'></div>") -> str:
    """What dvc_render.html does with a template: plain replacement of its three placeholders."""
    return template.replace("{plot_divs}", divs).replace("{scripts}", "").replace("{refresh_tag}", "")


def test_the_template_inlines_the_bundle_before_the_plot_divs_and_loads_nothing():
    page = page_template(BUNDLE, "NOTICE TEXT")
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page
    filled = fill(page)
    head, body = filled.split("</head>")
    assert BUNDLE in head and "NOTICE TEXT" in head and "<div id='p'></div>" in body
    assert "src=" not in filled and "http" not in filled.replace("http://www.w3.org", "")


@pytest.mark.parametrize("bad", ["{plot_divs}", "{scripts}", "{refresh_tag}", "</script>", "</SCRIPT >", "<!--"])
def test_a_bundle_that_cannot_be_inlined_is_refused(bad):
    with pytest.raises(PlotsTemplateError, match="cannot be inlined"):
        page_template(f"var a = '{bad}';", "notice")


def test_the_license_notice_names_every_library_and_carries_the_licenses():
    notice = plots_template.license_notice(
        {"vl-convert-python": "1.9.0", "vega": "6.2.0", "vega-lite": "5.21", "vega-embed": "7.0.2"},
        "Copyright 2023 Jon Mease\nRedistribution and use ...")
    for name in ("vega 6.2.0", "vega-lite 5.21", "vega-embed 7.0.2", "vl-convert-python 1.9.0", "d3", "ISC"):
        assert name in notice
    assert "University of Washington Interactive Data Lab" in notice and "Jon Mease" in notice


def test_the_installed_bundle_is_inlinable():
    """The real bundle from the installed vl-convert-python (about 2.5 s)."""
    bundle, notice = plots_template.bundle_and_notice()
    page = page_template(bundle, notice)
    assert "window.vegaEmbed" in bundle and len(bundle) > 100_000 and "{plot_divs}" in page
    assert "BSD-3-Clause" in notice and "Redistribution" in notice


def test_the_config_value_is_relative_to_the_dvc_folder(in_tmp):
    assert config_value("plots_template/offline.html", ".dvc") == "../plots_template/offline.html"
    assert config_value(in_tmp / ".dvc" / "x.html", in_tmp / ".dvc") == "x.html"


def test_the_committed_config_names_the_committed_fallback_page():
    config = (ROOT / ".dvc" / "config").read_text()
    assert f"html_template = {plots_template.FALLBACK}" in config
    fallback = (ROOT / ".dvc" / plots_template.FALLBACK).read_text()
    assert fallback.count("{plot_divs}") == 1 and fallback.count("{scripts}") == 1
    assert "vggbn plots-template" in fallback  # what to run when the CDN cannot be reached
    ignored = subprocess.run(["git", "check-ignore", "-q", f".dvc/{plots_template.FALLBACK}"], cwd=ROOT)
    assert ignored.returncode == 1, "the fallback page must not be ignored: a fresh clone's dvc plots show fills it"


def test_no_third_party_javascript_is_committed():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in listed if name.endswith((".js", ".mjs"))]
    big_html = [name for name in listed if name.endswith(".html") and (ROOT / name).stat().st_size > 20_000
                and "<script" in (ROOT / name).read_text(encoding="utf-8")]  # the run report holds inline SVG only
    assert not big_html, f"generated pages are not committed: {big_html}"
