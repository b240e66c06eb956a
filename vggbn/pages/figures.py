"""The pipeline's plots as pictures without a browser: DVC's filled Vega-Lite specs rendered by vl-convert.

`dvc plots show --json` (or `dvc plots diff --json REV...`) gives each plot of dvc.yaml as a complete Vega-Lite
spec, data and template filled in: the very specs the plots page draws. vl-convert renders them to SVG and PNG in
process (no browser, no network). Its output is byte-identical from run to run on one machine, so a report built
from it reruns nothing downstream.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Sequence

from vggbn import VggbnError
from vggbn.pages.plots_template import VEGA_LITE_VERSION

PNG_SCALE = 2  # pixels per CSS pixel: sharp on high-density screens


class FiguresError(VggbnError):
    pass


@dataclass(frozen=True)
class Figure:
    """One plot of dvc.yaml: DVC's id for it (a title, or the data file's path) and its filled Vega-Lite spec."""
    plot_id: str
    spec: dict

    @property
    def title(self) -> str:
        """The plot's title: its spec's title text, or (a title computed in the browser) its data file's path."""
        title = self.spec.get("title")
        text = title.get("text") if isinstance(title, dict) else title
        if isinstance(text, str) and text:
            return text
        return self.plot_id.rsplit(".", 1)[0] if "/" in self.plot_id else self.plot_id


def dvc_json(args: list[str]) -> dict:
    try:
        result = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
    except FileNotFoundError:
        raise FiguresError("dvc is not installed: pip install -e .") from None
    try:
        document = json.loads(result.stdout)
    except ValueError:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FiguresError(f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return document


def figures_from_dvc_json(document: dict) -> list[Figure]:
    """The vega plots of a `dvc plots show/diff --json` document, in dvc.yaml's order; an error names the file."""
    errors = document.get("errors") or []
    if errors:
        first = errors[0]
        where = first.get("source") or first.get("name") or "dvc.yaml"
        rev = f" (revision {first['rev']})" if first.get("rev") not in (None, "workspace") else ""
        raise FiguresError(f"{where}{rev}: DVC cannot read this plot: {first.get('msg') or first.get('type')}")
    figures = []
    for plot_id, entries in (document.get("data") or {}).items():
        for entry in entries:
            if entry.get("type") == "vega" and entry.get("content"):
                figures.append(Figure(plot_id, entry["content"]))
    if not figures:
        raise FiguresError("dvc.yaml: DVC found no plot with data (run `dvc repro` first?)")
    return figures


def filled_specs(revs: Sequence[str] = ()) -> list[Figure]:
    """Every plot of dvc.yaml as DVC fills it: of the workspace, or of `revs` side by side (`dvc plots diff`)."""
    args = ["plots", "diff", *revs] if revs else ["plots", "show"]
    return figures_from_dvc_json(dvc_json(args))


def _render(figure: Figure, kind: str, **options):
    import vl_convert

    try:
        return getattr(vl_convert, f"vegalite_to_{kind}")(figure.spec, vl_version=VEGA_LITE_VERSION, **options)
    except ValueError as error:  # vl-convert's "conversion failed:" and the JavaScript error on the next line
        reason = " ".join(line.strip() for line in str(error).splitlines()[:2])
        raise FiguresError(f"{figure.plot_id}: cannot draw this plot: {reason}") from None


def render_svg(figure: Figure) -> str:
    return _render(figure, "svg")


def render_png(figure: Figure, scale: float = PNG_SCALE) -> bytes:
    return _render(figure, "png", scale=scale)


def scoped_svg(svg: str, prefix: str) -> str:
    """`svg` with every element id (gradients, clip paths) prefixed, so that several SVGs inlined in one HTML page
    do not resolve each other's `url(#id)` references."""
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if not ids:
        return svg
    pattern = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
    svg = re.sub(rf'\bid="({pattern})"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(rf'url\(#({pattern})\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    return re.sub(rf'href="#({pattern})"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)


def slug(text: str, limit: int = 60) -> str:
    """A file name stem for a plot: lower-case words joined by dashes."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    stem = "-".join(words)[:limit].rstrip("-")
    return stem or "plot"
