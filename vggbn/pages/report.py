"""The run report: the key numbers as tables and every plot as a picture, in a page anyone can open or attach.

`report/index.html` holds the figures as inline SVG and needs no script and no network; `report/README.md` shows
the same tables and the figures as PNGs (`report/figures/`), for a repository browser or a chat. The figures are the
plots of dvc.yaml as `dvc plots show --json` fills them (vggbn.pages.figures). `vggbn report --rev A --rev B` writes the
same kind of report for two experiments or revisions side by side: their differing params, their key numbers and
`dvc plots diff`'s figures.

Everything written is a function of the metrics, the plot data and the templates: no dates, no paths of the
machine, so a rerun on the same inputs writes the same bytes.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from vggbn import VggbnError, compat
from vggbn.storage.atomic import atomic_path

# The bounds docs/params.md states for metrics/insert_bn.json.
IDENTITY_BOUNDS = {"max_abs_diff": 1e-5, "max_abs_diff_logits": 1e-4}
# The metrics files the report reads (metrics/<name>.json); a missing one leaves its rows out.
METRICS = ("demo_model", "insert_bn", "finetune", "combine", "transfer", "bn_stats")
WORKSPACE = "workspace"


class ReportError(VggbnError):
    pass


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""


@dataclass(frozen=True)
class Document:
    """What a report shows: a title, an introduction (plain text), tables, and figures (vggbn.pages.figures.Figure)."""
    title: str
    intro: str
    tables: list[Table]
    figures: list = field(default_factory=list)


# --- numbers and tables (pure) ------------------------------------------------------------------------------------

def number(value) -> str:
    """A metric as the report prints it: 4 decimals, or 3 significant digits for tiny differences."""
    if value is None:
        return "–"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}"
    return str(value)


def _lr(text: str) -> str:
    return f"{float(text):g}"


def identity_table(insert_bn: Mapping) -> Table:
    rows = []
    for key, what in (("max_abs_diff", "largest difference of output probabilities"),
                      ("max_abs_diff_logits", "largest difference of logits (before the softmax)")):
        if key in insert_bn:
            value, bound = insert_bn[key], IDENTITY_BOUNDS[key]
            rows.append((f"{what} (`{key}`)", number(value), f"≤ {bound:g}",
                         "yes" if value <= bound else "NO"))
    for key, what in (("end_to_end_max_abs_diff", "whole model with conv BN, probabilities"),
                      ("end_to_end_max_abs_diff_logits", "whole model with conv BN, logits")):
        if key in insert_bn:
            rows.append((f"{what} (`{key}`)", number(insert_bn[key]), "", ""))
    for key, what in (("accuracy", "dense part's valid accuracy, before / after"),
                      ("loss", "dense part's valid loss, before / after")):
        if f"{key}_before" in insert_bn:
            rows.append((what, f"{number(insert_bn[f'{key}_before'])} / {number(insert_bn[f'{key}_after'])}", "", ""))
    note = f"over {insert_bn['samples']} valid samples" if "samples" in insert_bn else ""
    return Table("Identity: BN inserted without changing what the model computes",
                 ("check", "value", "bound", "within"), rows, note)


def accuracy_table(metrics: Mapping[str, Mapping], *, demo: bool) -> Table:
    rows = []
    model = metrics.get("demo_model", {})
    if demo and "valid_accuracy" in model:
        rows.append(("demo classifier, as trained (no BN)", f"its valid split ({model.get('valid_images', '?')})",
                     number(model["valid_accuracy"]), number(model.get("valid_loss"))))
    combine = metrics.get("combine", {})
    images = f"valid images ({combine.get('images', '?')})"
    if "original_accuracy" in combine:
        rows.append(("pretrained classifier, end to end", images, number(combine["original_accuracy"]),
                     number(combine.get("original_loss"))))
    if "combined_accuracy" in combine:
        rows.append(("combined model (calibrated BN, fine-tuned), end to end", images,
                     number(combine["combined_accuracy"]), number(combine.get("combined_loss"))))
    return Table("Accuracy", ("model", "evaluated on", "accuracy", "loss"), rows)


def finetune_table(finetune: Mapping) -> Table:
    rows = [(split, number(finetune.get(f"{split}_loss")), number(finetune.get(f"{split}_accuracy")))
            for split in ("train", "valid") if f"{split}_loss" in finetune]
    epochs = finetune.get("epochs")
    return Table(f"Fine-tuning, last epoch{f' ({epochs} of {epochs})' if epochs else ''}",
                 ("split", "loss", "accuracy"), rows, "the dense part with BN, on the cached features")


def transfer_table(transfer: Mapping) -> Table:
    starts = [start for start in ("with_bn", "without_bn") if start in transfer]
    names = {"with_bn": "with BN", "without_bn": "without BN"}
    lrs = sorted({lr for start in starts for lr in transfer[start].get("per_lr", {})}, key=float)
    rows = []
    for lr in lrs:
        cells = []
        for start in starts:
            result = transfer[start]["per_lr"].get(lr)
            cells.append("–" if result is None else
                         f"{number(result['accuracy'])} ({number(result.get('accuracy_min'))}–"
                         f"{number(result.get('accuracy_max'))})")
        rows.append((f"lr {_lr(lr)}", *cells))
    rows.append(("best", *(f"{number(transfer[s].get('best_accuracy'))} at lr {_lr(str(transfer[s]['best_lr']))}"
                           if transfer[s].get("best_lr") is not None else "–" for s in starts)))
    rows.append(("spread (best − worst lr)", *(number(transfer[s].get("spread")) for s in starts)))
    classes = ", ".join(map(str, transfer.get("classes", [])))
    note = (f"valid accuracy on the new task's classes ({classes}), mean over seeds (min–max); "
            f"trained: {transfer.get('train_mode', '?')}")
    return Table("Transfer to new classes, with and without BN",
                 ("learning rate", *(f"{names[s]}: accuracy (min–max)" for s in starts)), rows, note)


def calibration_table(bn_stats: Mapping) -> Table:
    rows = []
    for layer, stats in bn_stats.items():
        if not isinstance(stats, Mapping):
            continue  # strategy, replicas
        units, dead = stats.get("units", 0), stats.get("dead_units", 0)
        share = f"{dead / units:.0%}" if units else "–"
        rows.append((layer, str(units), str(dead), share, str(stats.get("rows", "–"))))
    return Table("BN calibration per layer", ("layer", "units", "dead units", "dead share", "rows measured"), rows,
                 "dead units have variance 0 over the calibration rows (after a ReLU: never firing)")


def key_tables(metrics: Mapping[str, Mapping], *, demo: bool) -> list[Table]:
    """The key numbers of one run, as tables, from its metrics files (by name: insert_bn, combine, ...)."""
    tables = []
    if metrics.get("insert_bn"):
        tables.append(identity_table(metrics["insert_bn"]))
    tables.append(accuracy_table(metrics, demo=demo))
    if metrics.get("finetune"):
        tables.append(finetune_table(metrics["finetune"]))
    if metrics.get("transfer"):
        tables.append(transfer_table(metrics["transfer"]))
    if metrics.get("bn_stats"):
        tables.append(calibration_table(metrics["bn_stats"]))
    return [table for table in tables if table.rows]


def key_numbers(metrics: Mapping[str, Mapping]) -> dict[str, object]:
    """The numbers two runs are compared by, as (`file: key` -> value)."""
    found: dict[str, object] = {}
    for name, keys in (("insert_bn", ("max_abs_diff", "max_abs_diff_logits")),
                       ("demo_model", ("valid_accuracy",)),
                       ("combine", ("original_accuracy", "combined_accuracy", "combined_loss")),
                       ("finetune", ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epochs"))):
        for key in keys:
            if key in metrics.get(name, {}):
                found[f"{name}: {key}"] = metrics[name][key]
    for start in ("with_bn", "without_bn"):
        for key in ("best_accuracy", "best_lr", "spread"):
            value = metrics.get("transfer", {}).get(start, {}).get(key)
            if value is not None:
                found[f"transfer: {start}.{key}"] = value
    for layer, stats in metrics.get("bn_stats", {}).items():
        if isinstance(stats, Mapping):
            found[f"bn_stats: {layer}.dead_units"] = stats.get("dead_units")
    return found


def compare_tables(by_rev: Mapping[str, Mapping[str, Mapping]], params_diff: Mapping[str, Mapping]) -> list[Table]:
    """Revisions side by side: the params that differ, then the key numbers (and, for two, their difference)."""
    revs = list(by_rev)
    tables = []
    if params_diff:
        rows = [(key, *(number(values.get(rev)) for rev in revs)) for key, values in sorted(params_diff.items())]
        tables.append(Table("Params that differ", ("param", *revs), rows))
    numbers = {rev: key_numbers(metrics) for rev, metrics in by_rev.items()}
    keys = list(dict.fromkeys(key for rev in revs for key in numbers[rev]))
    rows = []
    for key in keys:
        values = [numbers[rev].get(key) for rev in revs]
        row = tuple(_lr(str(v)) if key.endswith("best_lr") and v is not None else number(v) for v in values)
        if len(revs) == 2:
            a, b = values
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
            row += (number(b - a) if numeric and not key.endswith("best_lr") else "",)
        rows.append((key, *row))
    header = ("metric", *revs) + ((f"{revs[1]} − {revs[0]}",) if len(revs) == 2 else ())
    tables.append(Table("Metrics", header, rows))
    return tables


# --- pages (pure) -------------------------------------------------------------------------------------------------

STYLE = """\
body { font-family: sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
p.note { color: #555; font-size: 0.9em; margin-top: 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; }"""


def _html_cell(text: str, tag: str) -> str:
    escaped = html.escape(text)
    # `key` in a cell reads as code, as in the Markdown version
    parts = escaped.split("`")
    escaped = "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
    return f"<{tag}>{escaped}</{tag}>"


def html_table(table: Table) -> str:
    lines = [f"<h3>{html.escape(table.title)}</h3>", "<table>",
             "<tr>" + "".join(_html_cell(cell, "th") for cell in table.header) + "</tr>"]
    lines += ["<tr>" + "".join(_html_cell(cell, "td") for cell in row) + "</tr>" for row in table.rows]
    lines.append("</table>")
    if table.note:
        lines.append(f'<p class="note">{html.escape(table.note)}</p>')
    return "\n".join(lines)


def html_page(document: Document, svgs: Sequence[str]) -> str:
    """A self-contained page: tables, and each figure as inline SVG. No script, no external resource."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(document.title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
             f"<h1>{html.escape(document.title)}</h1>", _html_cell(document.intro, "p"), "<h2>Key numbers</h2>"]
    parts += [html_table(table) for table in document.tables]
    if svgs:
        parts += ["<h2>Figures</h2>", '<div class="figures">']
        for figure, svg in zip(document.figures, svgs):
            parts.append(f'<figure aria-label="{html.escape(figure.title, quote=True)}">\n{svg}\n</figure>')
        parts.append("</div>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(map(_md_cell, table.header)) + " |",
             "|" + "|".join(" --- " for _ in table.header) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def markdown_page(document: Document, images: Sequence[str]) -> str:
    """The same report as Markdown, with each figure as a PNG next to it (relative paths)."""
    parts = [f"# {document.title}", "", document.intro, "", "## Key numbers", ""]
    for table in document.tables:
        parts += [markdown_table(table), ""]
    if images:
        parts += ["## Figures", ""]
        for figure, image in zip(document.figures, images):
            parts += [f"![{_md_cell(figure.title)}]({image})", ""]
    return "\n".join(parts)


# --- files --------------------------------------------------------------------------------------------------------

def read_metrics(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """{name: content} of metrics files (`metrics/combine.json` is `combine`); a bad one is an error naming it."""
    found = {}
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ReportError(f"{path}: cannot read this metrics file: {error.strerror}") from None
        found[path.stem] = _parse_metrics(path, text)
    return found


def _parse_metrics(path, text: str) -> dict:
    try:
        content = json.loads(text)
    except ValueError as error:
        raise ReportError(f"{path}: not a JSON metrics file: {error}") from None
    if not isinstance(content, dict):
        raise ReportError(f"{path}: expected a JSON object of metrics, got {type(content).__name__}")
    return content


def write_report(out_dir: str | os.PathLike, document: Document) -> None:
    """Render the figures and write `index.html`, `README.md` and `figures/*.png` to `out_dir`, as one folder
    renamed into place when complete."""
    from vggbn.pages.figures import render_png, render_svg, scoped_svg, slug

    svgs, images, pngs = [], [], []
    for number_, figure in enumerate(document.figures, start=1):
        svgs.append(scoped_svg(render_svg(figure), f"f{number_}-"))
        images.append(f"figures/{number_:02d}-{slug(figure.title)}.png")
        pngs.append(render_png(figure))
    with atomic_path(out_dir) as folder:
        (folder / "figures").mkdir(parents=True)
        (folder / "index.html").write_text(html_page(document, svgs), encoding="utf-8")
        (folder / "README.md").write_text(markdown_page(document, images), encoding="utf-8")
        for image, png in zip(images, pngs):
            (folder / image).write_bytes(png)


RUN_INTRO = ("The numbers and plots of this run of the vggbn pipeline (dvc repro): the identity check of the "
             "calibrated batch normalization, the accuracies, fine-tuning's last epoch, the transfer comparison with "
             "and without BN, and the BN calibration per layer. The figures are the plots `dvc plots show` draws, "
             "rendered by vl-convert; this page needs no network and no script.")


# --- two runs side by side ----------------------------------------------------------------------------------------

def metrics_at(rev: str, folder: str = "metrics") -> dict[str, dict]:
    """The metrics files of a git revision or experiment name (DVC's file system), or of the workspace."""
    if rev == WORKSPACE:
        return read_metrics(p for p in (Path(folder) / f"{name}.json" for name in METRICS) if p.exists())
    from dvc.api import DVCFileSystem

    try:
        compat.check_dvc_revision(rev)  # a git revision or an experiment's name; DVC's file system would say nothing
        fs = DVCFileSystem(".", rev=rev)
        texts = {name: fs.read_text(f"{folder}/{name}.json") for name in METRICS
                 if fs.exists(f"{folder}/{name}.json")}
    except compat.dvc_errors() as error:
        raise ReportError(f"--rev {rev}: {error}") from None
    return {name: _parse_metrics(f"{folder}/{name}.json at {rev}", text) for name, text in texts.items()}


def params_diff(revs: Sequence[str]) -> dict[str, dict[str, object]]:
    """{param: {rev: value}} of the params that differ between two revisions (`dvc params diff`)."""
    from vggbn.pages.figures import dvc_json

    if len(revs) != 2:
        return {}
    document = dvc_json(["params", "diff", *revs])
    found = {}
    for changes in document.values():
        for key, change in (changes or {}).items():
            found[key] = {revs[0]: change.get("old"), revs[1]: change.get("new")}
    return found


def write_comparison(revs: Sequence[str], out_dir: str | os.PathLike) -> Path:
    """`vggbn report --rev A --rev B`: the two revisions' report side by side in `out_dir`; returns its page."""
    from vggbn.pages.figures import filled_specs

    revs = list(dict.fromkeys(revs))
    if revs == [WORKSPACE]:
        raise ReportError("--rev: name a revision or experiment to compare the workspace with")
    if len(revs) == 1:
        revs = [WORKSPACE, revs[0]]
    by_rev = {rev: metrics_at(rev) for rev in revs}
    tables = compare_tables(by_rev, params_diff(revs))
    intro = (f"{' and '.join(revs)} side by side: the params that differ, the key numbers of each, and the plots "
             f"as `dvc plots diff {' '.join(revs)}` draws them (one colour, dash or panel per revision).")
    write_report(out_dir, Document(f"vggbn: {' vs '.join(revs)}", intro, tables, filled_specs(revs)))
    return Path(out_dir) / "index.html"
