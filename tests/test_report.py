"""The run report and the plot templates without a browser: tables from metrics, pages, SVG ids, DVC's JSON, and
the templates in .dvc/plots filled the way DVC fills them and drawn by vl-convert."""

import json
import re
from pathlib import Path

import pytest

from vggbn.pages import report
from vggbn.pages.figures import Figure, FiguresError, figures_from_dvc_json, render_svg, scoped_svg, slug
from vggbn.pages.report import Document, ReportError, Table

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / ".dvc" / "plots"

METRICS = {
    "insert_bn": {"max_abs_diff": 1.19e-07, "max_abs_diff_logits": 3.8e-06, "accuracy_before": 0.99,
                  "accuracy_after": 0.99, "loss_before": 0.0226, "loss_after": 0.0226, "samples": 253},
    "demo_model": {"valid_accuracy": 0.992, "valid_loss": 0.0226, "valid_images": 253},
    "combine": {"combined_accuracy": 0.996, "combined_loss": 0.0168, "original_accuracy": 0.992,
                "original_loss": 0.0226, "images": 253},
    "finetune": {"epochs": 3, "train_loss": 0.177, "train_accuracy": 0.935, "valid_loss": 0.0168,
                 "valid_accuracy": 0.996},
    "transfer": {"classes": ["7", "8", "9"], "train_mode": "dense",
                 **{start: {"best_accuracy": 0.908, "best_lr": 0.001, "spread": 0.43,
                            "per_lr": {lr: {"accuracy": acc, "accuracy_min": acc - 0.1, "accuracy_max": acc + 0.05,
                                            "loss": 1.0} for lr, acc in (("0.01", 0.85), ("0.0001", 0.48),
                                                                          ("0.001", 0.908))}}
                    for start in ("with_bn", "without_bn")}},
    "bn_stats": {"fc1": {"units": 128, "dead_units": 69, "rows": 1011}, "fc2": {"units": 128, "dead_units": 0,
                                                                                 "rows": 1011}},
}


def cells(table: Table) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in table.rows}


@pytest.mark.parametrize("value, text", [(None, "–"), (3, "3"), (0.99604, "0.9960"), (1.1920929e-07, "1.19e-07"),
                                         (0.0, "0.0000"), (float("nan"), "nan"), ("dense", "dense")])
def test_numbers_print_with_four_decimals_or_three_digits_when_tiny(value, text):
    assert report.number(value) == text


def test_key_tables_hold_the_identity_accuracies_last_epoch_transfer_and_calibration():
    tables = {table.title.split(",")[0].split(":")[0]: table for table in report.key_tables(METRICS, demo=True)}
    assert list(tables) == ["Identity", "Accuracy", "Fine-tuning", "Transfer to new classes", "BN calibration per layer"]
    identity = cells(tables["Identity"])
    assert identity["largest difference of output probabilities (`max_abs_diff`)"] == ("1.19e-07", "≤ 1e-05", "yes")
    assert identity["largest difference of logits (before the softmax) (`max_abs_diff_logits`)"][2] == "yes"
    accuracy = cells(tables["Accuracy"])
    assert [row[1] for row in accuracy.values()] == ["0.9920", "0.9920", "0.9960"]
    assert "(3 of 3)" in tables["Fine-tuning"].title
    assert cells(tables["Fine-tuning"])["valid"] == ("0.0168", "0.9960")
    transfer = tables["Transfer to new classes"]
    assert [row[0] for row in transfer.rows] == ["lr 0.0001", "lr 0.001", "lr 0.01", "best",
                                                 "spread (best − worst lr)"]
    assert cells(transfer)["lr 0.0001"] == ("0.4800 (0.3800–0.5300)",) * 2
    assert cells(transfer)["best"] == ("0.9080 at lr 0.001",) * 2
    assert cells(tables["BN calibration per layer"])["fc1"] == ("128", "69", "54%", "1011")


def test_a_bound_exceeded_says_so_and_the_demo_row_needs_the_demo_model():
    bad = {**METRICS, "insert_bn": {**METRICS["insert_bn"], "max_abs_diff": 0.002}}
    assert report.identity_table(bad["insert_bn"]).rows[0][-1] == "NO"
    accuracy = report.accuracy_table(METRICS, demo=False)
    assert [row[0] for row in accuracy.rows] == ["pretrained classifier, end to end",
                                                 "combined model (calibrated BN, fine-tuned), end to end"]


def test_missing_metrics_files_leave_their_tables_out():
    tables = report.key_tables({"combine": METRICS["combine"]}, demo=True)
    assert [table.title for table in tables] == ["Accuracy"]


def test_two_revisions_side_by_side_with_their_difference():
    other = json.loads(json.dumps(METRICS))
    other["combine"]["combined_accuracy"] = 0.95
    other["transfer"]["with_bn"]["best_lr"] = 0.01
    tables = report.compare_tables({"exp-a": METRICS, "exp-b": other},
                                   {"finetune.lr": {"exp-a": 0.0001, "exp-b": 0.0003}})
    params, numbers = tables
    assert params.header == ("param", "exp-a", "exp-b") and params.rows == [("finetune.lr", "0.0001", "0.0003")]
    assert numbers.header == ("metric", "exp-a", "exp-b", "exp-b − exp-a")
    rows = cells(numbers)
    assert rows["combine: combined_accuracy"] == ("0.9960", "0.9500", "-0.0460")
    assert rows["transfer: with_bn.best_lr"] == ("0.001", "0.01", "")
    assert rows["bn_stats: fc1.dead_units"] == ("69", "69", "0")


def test_the_html_page_is_self_contained_and_the_markdown_links_its_pngs():
    figure = Figure("plots/identity.csv", {"title": {"text": "Identity <check>"}})
    document = Document("A report", "Intro with `code`.", [Table("T", ("a", "b"), [("x|y", "1")], "a note")],
                        [figure])
    page = report.html_page(document, ['<svg class="marks"><g></g></svg>'])
    assert "<script" not in page and "http" not in page and "<link" not in page
    assert '<figure aria-label="Identity &lt;check&gt;">' in page and '<svg class="marks">' in page
    assert "<code>code</code>" in page and "<td>x|y</td>" in page
    markdown = report.markdown_page(document, ["figures/01-identity-check.png"])
    assert "| x\\|y | 1 |" in markdown and "_a note_" in markdown
    assert "![Identity <check>](figures/01-identity-check.png)" in markdown


def test_svg_ids_are_scoped_so_inline_figures_do_not_share_gradients():
    svg = '<svg><defs><linearGradient id="gradient_0"/><clipPath id="clip1"/></defs>' \
          '<rect fill="url(#gradient_0)" clip-path="url(#clip1)"/><use href="#clip1"/><g id="clip10"/></svg>'
    scoped = scoped_svg(svg, "f3-")
    assert 'id="f3-gradient_0"' in scoped and "url(#f3-gradient_0)" in scoped and "url(#f3-clip1)" in scoped
    assert 'href="#f3-clip1"' in scoped and 'id="f3-clip10"' in scoped and 'id="clip' not in scoped
    assert scoped_svg("<svg/>", "f1-") == "<svg/>"


def test_dvc_json_gives_vega_figures_in_order_and_errors_name_the_file():
    document = {"data": {"b": [{"type": "vega", "content": {"mark": "point"}}],
                         "a": [{"type": "image", "url": "x.png"}, {"type": "vega", "content": {"mark": "line"}}]}}
    assert [f.plot_id for f in figures_from_dvc_json(document)] == ["b", "a"]
    broken = {"errors": [{"name": "plots/identity.csv", "source": "plots/identity.csv", "rev": "workspace",
                          "type": "FileNotFoundError", "msg": ""}], "data": {}}
    with pytest.raises(FiguresError, match=r"^plots/identity.csv: DVC cannot read this plot: FileNotFoundError"):
        figures_from_dvc_json(broken)
    with pytest.raises(FiguresError, match="no plot with data"):
        figures_from_dvc_json({"data": {}})


def test_figure_titles_and_file_names():
    assert Figure("x", {"title": {"text": "Fine-tuning loss"}}).title == "Fine-tuning loss"
    assert Figure("plots/bn_calibration/fc1.csv", {"title": {"text": {"expr": "'a'"}}}).title == \
        "plots/bn_calibration/fc1"
    assert slug("Identity check, top-class (before & after)") == "identity-check-top-class-before-after"
    assert slug("???") == "plot"


def test_a_bad_metrics_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "combine.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"combine.json: not a JSON metrics file"):
        report.read_metrics([tmp_path / "combine.json"])
    with pytest.raises(ReportError, match=r"finetune.json: cannot read this metrics file"):
        report.read_metrics([tmp_path / "finetune.json"])
    (tmp_path / "combine.json").write_text("[1]")
    with pytest.raises(ReportError, match="expected a JSON object"):
        report.read_metrics([tmp_path / "combine.json"])


# --- the templates in .dvc/plots, filled as DVC fills them, drawn by vl-convert ----------------------------------

def filled(template: str, datapoints: list[dict], **props) -> Figure:
    """What `dvc plots show --json` gives for a plot: dvc_render's VegaRenderer over DVC-style datapoints."""
    from dvc_render import VegaRenderer

    renderer = VegaRenderer(datapoints, props.pop("name", "plot"), template=template, template_dir=str(TEMPLATES),
                            **props)
    return Figure(renderer.name, renderer.get_filled_template())


def labels(svg: str, role: str) -> list[str]:
    """Texts of one role (axis labels, title) of a Vega SVG, in order."""
    found = []
    for group in re.findall(rf'<g class="mark-text role-{role}"[^>]*>(.*?)</g>', svg, re.S):
        found += re.findall(r"<text[^>]*>([^<]*)</text>", group)
    return found


def curves(xs, field, files=("train/loss.tsv", "eval/loss.tsv"), revs=("workspace",)):
    return [{"step": str(x), field: str(0.5 / (x + 1) + i), "rev": rev, "filename": file}
            for rev in revs for i, file in enumerate(files) for x in xs]


def test_epoch_curves_have_integer_ticks():
    for epochs in (3, 12, 100):
        svg = render_svg(filled("epochs", curves(range(epochs), "loss"), x="step", y="loss", x_label="epoch"))
        ticks = labels(svg, "axis-label")
        x_ticks = ticks[:ticks.index("0.0") if "0.0" in ticks else None]
        steps = [int(t) for t in x_ticks if re.fullmatch(r"\d+", t)]
        assert steps and steps == sorted(set(steps)) and steps[0] == 0 and len(steps) <= 13, (epochs, ticks)
    assert "epoch" in labels(svg, "axis-title")


def test_the_identity_scatter_draws_y_equals_x():
    points = [{"before": str(p), "after": str(p), "rev": "workspace"} for p in (0.2, 0.5, 0.99)]
    figure = filled("identity", points, x="before", y="after", title="Identity")
    rules = [layer for layer in figure.spec["layer"] if layer["mark"]["type"] == "rule"]
    assert rules and rules[0]["encoding"]["x2"] == {"datum": 1} and rules[0]["encoding"]["y2"] == {"datum": 1}
    svg = render_svg(figure)
    assert re.search(r'class="mark-rule role-mark[^"]*"[^>]*>\s*<line', svg)  # the line is drawn


def test_bn_calibration_is_titled_by_its_layer_and_its_axes_hold_every_point():
    rows = [{"unit": "0", "mean": "0.0", "std": "0.0", "dead": "1", "rev": "workspace"},
            {"unit": "1", "mean": "3.47", "std": "4.75", "dead": "0", "rev": "workspace"},
            {"unit": "2", "mean": "-0.5", "std": "1.2", "dead": "0", "rev": "workspace"}]
    svg = render_svg(filled("bn_calibration", rows, name="plots/bn_calibration/fc1.csv", x="mean", y="std",
                            title="plots/bn_calibration/fc1.csv"))
    assert "BN calibration of layer fc1" in labels(svg, "title-text")  # and the facet header: the revision
    ticks = labels(svg, "axis-label")
    numbers = [float(t.replace("−", "-")) for t in ticks]
    x_ticks, y_ticks = numbers[:len(numbers) // 2], numbers[len(numbers) // 2:]
    assert min(x_ticks) <= -0.5 and max(x_ticks) >= 3.47 and min(y_ticks) <= 0 and max(y_ticks) >= 4.75
    assert "dead (variance 0)" in labels(svg, "legend-label")


def test_transfer_ticks_are_one_per_decade_and_do_not_collide():
    rows = [{"log10_lr": str(x), "accuracy": str(a), "rev": "workspace", "filename": f}
            for f in ("with_bn.csv", "without_bn.csv") for x, a in ((-4.0, 0.5), (-3.0, 0.9), (-2.0, 0.85))]
    svg = render_svg(filled("transfer", rows, x="log10_lr", y="accuracy", x_label="learning rate"))
    ticks = labels(svg, "axis-label")
    assert ticks[:3] == ["1e-4", "1e-3", "1e-2"], ticks
    assert {"with BN", "without BN"} <= set(labels(svg, "legend-label"))
    within_a_decade = [{**row, "log10_lr": str(x)} for row, x in zip(rows, (-3.5, -3.3, -3.1) * 2)]
    assert labels(render_svg(filled("transfer", within_a_decade, x="log10_lr", y="accuracy")), "axis-label")[0]


def test_a_report_rewritten_from_the_same_inputs_is_byte_identical(tmp_path):
    figure = filled("identity", [{"before": "0.5", "after": "0.5", "rev": "workspace"}], x="before", y="after")
    document = Document("R", "intro", report.key_tables(METRICS, demo=True), [figure])
    report.write_report(tmp_path / "a", document)
    report.write_report(tmp_path / "b", document)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["README.md", "figures/01-plot.png", "index.html"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "figures/01-plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
