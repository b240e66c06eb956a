"""The README and the pages of docs/ quote a figure of the committed run only as `<figure> (`metrics/<file>.json`:
`<key>`)`, and each such figure is that metric, rounded as shown: a rerun that moves a metric fails here instead of
leaving a page stale."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTED = re.compile(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s+\(`(metrics/[\w.]+\.json)`:\s+`([\w.]+)`\)")


def quoted_figures(text: str) -> list[tuple[str, str, str]]:
    return QUOTED.findall(" ".join(text.split()))  # a quote may wrap across lines


def matches(shown: str, value: float) -> bool:
    """`value` written as `shown` is: the same digits after rounding (2 significant digits of a `1.8e-07`)."""
    if "e" in shown:
        mantissa = shown.split("e")[0]
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return f"{value:.{digits}e}" == f"{float(shown):.{digits}e}"
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return round(value, decimals) == float(shown)


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_figure_the_readme_and_docs_quote_is_its_metric():
    figures = {page.relative_to(ROOT).as_posix(): quoted_figures(page.read_text()) for page in PAGES}
    assert figures["README.md"], "the README quotes the demo's accuracy"
    assert sum(map(len, figures.values())) >= 5  # the demo's accuracy and the transfer figures at least
    wrong = []
    for page, shown, file, key in ((page, *figure) for page, found in figures.items() for figure in found):
        value = json.loads((ROOT / file).read_text())
        for part in key.split("."):
            value = value[part]
        if not matches(shown, float(value)):
            wrong.append(f"{page}: {shown} ({file}: {key}) is {value}")
    assert not wrong, f"figures that are not the committed run's: {wrong}"


def test_the_check_reads_wrapped_quotes_and_refuses_a_drifted_figure():
    text = "reaches 0.988 (`metrics/demo_model.json`:\n`valid_accuracy`) valid accuracy"
    assert quoted_figures(text) == [("0.988", "metrics/demo_model.json", "valid_accuracy")]
    assert matches("0.996", 0.9960474308300395) and not matches("0.988", 0.9960474308300395)
    assert matches("1.8e-07", 1.7881393432617188e-07) and not matches("2.4e-07", 1.7881393432617188e-07)
