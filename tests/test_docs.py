"""The README stays a five-minute read (at most 200 lines) that links every page of docs/, and every relative link
of the README and of docs/ leads somewhere: to a file of the repository and, where it names one, to a heading of
that file (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(text: str) -> list[str]:
    """The targets of the page's Markdown links, outside code blocks and code spans."""
    prose = FENCE.sub("", text)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("    "))  # indented code
    return LINK.findall(re.sub(r"`[^`\n]*`", "", prose))


def anchors(text: str) -> set[str]:
    """GitHub's anchor of each heading (a repeated heading gets -1, -2, ...)."""
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `page` whose file (inside `root`) or heading does not exist."""
    bad = []
    for target in links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... : not this repository's
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or root not in file.parents:
            bad.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            bad.append(f"{target}: no heading #{anchor} in {file.relative_to(root)}")
    return bad


def test_the_readme_is_at_most_200_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move the detail to a page of docs/ and link it"


def test_the_readme_links_every_page_of_docs():
    targets = {target.partition("#")[0] for target in links((ROOT / "README.md").read_text())}
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds the pages the README links"
    unlinked = [page for page in pages if page not in targets]
    assert not unlinked, f"pages of docs/ the README does not link: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert not broken(page), broken(page)


def test_the_checks_find_a_broken_link_an_unknown_heading_and_an_unlinked_page(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Two words, `code` and: more\n\n## Again\n\n## Again\n")
    text = ("[ok](docs/a.md#two-words-code-and-more) [ok](docs/a.md#again-1) [bad](docs/b.md) [bad](docs/a.md#nope)"
            " `[in code](docs/c.md)` [web](https://dvc.org)\n\n    [indented](docs/d.md)\n")
    readme = tmp_path / "README.md"
    readme.write_text(text + "[outside](../elsewhere.md)\n")
    assert links(text) == ["docs/a.md#two-words-code-and-more", "docs/a.md#again-1", "docs/b.md", "docs/a.md#nope",
                           "https://dvc.org"]
    assert anchors((tmp_path / "docs" / "a.md").read_text()) == {"two-words-code-and-more", "again", "again-1"}
    (tmp_path.parent / "elsewhere.md").write_text("# outside the repository\n")
    assert broken(readme, tmp_path) == ["docs/b.md: no file docs/b.md",
                                        "docs/a.md#nope: no heading #nope in docs/a.md",
                                        "../elsewhere.md: no file ../elsewhere.md"]
