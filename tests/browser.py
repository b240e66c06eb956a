"""Headless Chromium for the page tests: a fresh profile, every network name unresolvable, the DOM after scripts ran.

`--dump-dom` with `--virtual-time-budget` prints the page's DOM once its scripts (and their timers) have run, and
`--enable-logging=stderr --v=0` prints each console message as a `CONSOLE` line, an uncaught error as "Uncaught ...".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", '--host-resolver-rules=MAP * ~NOTFOUND']


def chromium() -> str:
    """The browser's path, or a skip saying why there is none."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (.ci/install-chromium installs Debian's chromium package; "
                "it cannot where there is no root or no apt-get)")


def _command(page: Path, profile: Path, *extra: str, budget_ms: int) -> list[str]:
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    return [chromium(), *FLAGS, *sandbox, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
            *extra, page.resolve().as_uri()]


@dataclass
class Page:
    dom: str
    console: list[str]

    @property
    def script_errors(self) -> list[str]:
        """Uncaught errors and rejections, and resources that failed to load (a URL the page should not have)."""
        return [line for line in self.console if "Uncaught" in line or "net::ERR_" in line]


def open_page(page: Path, profile: Path, budget_ms: int = 15000) -> Page:
    result = subprocess.run(_command(page, profile, "--enable-logging=stderr", "--v=0", "--dump-dom",
                                     budget_ms=budget_ms), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "</html>" in result.stdout, f"chromium failed:\n{result.stderr[-3000:]}"
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return Page(result.stdout, console)


def screenshot(page: Path, profile: Path, out: Path, size: tuple[int, int] = (1400, 2400)) -> Path:
    subprocess.run(_command(page, profile, f"--window-size={size[0]},{size[1]}", f"--screenshot={out}",
                            budget_ms=15000), capture_output=True, timeout=180, check=True)
    return out


# A data mark group of Vega's SVG output (not an axis, legend or title) that holds at least one element.
_DRAWN_MARKS = re.compile(r'<g class="mark-[a-z]+ role-mark[^"]*"[^>]*>\s*<(?!/)')


def _sections(dom: str, start: re.Pattern) -> dict[str, str]:
    found = list(start.finditer(dom))
    return {m.group(1): dom[m.start():found[i + 1].start() if i + 1 < len(found) else len(dom)]
            for i, m in enumerate(found)}


def plot_divs(dom: str) -> dict[str, dict]:
    """{div id: {status, svgs, drawn_marks}} of each plot div of a `dvc plots show` page (after our template's
    vegaEmbed marked it `drawn` or `failed`, or the fallback page's `not drawn`)."""
    sections = _sections(dom, re.compile(r'<div id="([^"]+)"[^>]*data-vggbn-plot="[^"]*"'))
    return {plot_id: {"status": re.search(r'data-vggbn-plot="([^"]*)"', text).group(1),
                      "svgs": len(re.findall(r'<svg[^>]*class="marks"', text)),
                      "drawn_marks": len(_DRAWN_MARKS.findall(text))} for plot_id, text in sections.items()}


def figures(dom: str) -> dict[str, dict]:
    """{aria-label: {svgs, drawn_marks}} of each <figure> of the run report."""
    sections = _sections(dom, re.compile(r'<figure aria-label="([^"]*)"'))
    return {label: {"svgs": len(re.findall(r"<svg\b", text)), "drawn_marks": len(_DRAWN_MARKS.findall(text))}
            for label, text in sections.items()}


def page_errors(dom: str) -> list[str]:
    """What our template's error hook listed in the page (script errors, console.error, failed plots)."""
    box = re.search(r'<ul id="vggbn-errors"[^>]*>(.*?)</ul>', dom, re.S)
    return re.findall(r"<li>(.*?)</li>", box.group(1), re.S) if box else ["(no error list: not our template)"]
