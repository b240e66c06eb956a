"""Stage report: the run's key numbers as tables and every plot of dvc.yaml as a picture, in report/index.html
(inline SVG: no script, no network) and report/README.md (with PNGs in report/figures/)."""

import os

from vggbn.runner import stage


def run(paths, params):
    """The run's report from its metrics files and DVC's filled plot specs, written to `--out`; the folder and how
    many tables and figures it holds (no metrics file: for the stage's summary)."""
    from vggbn.pages.figures import filled_specs
    from vggbn.pages.report import RUN_INTRO, Document, key_tables, read_metrics, write_report
    from vggbn.storage.results import StageResult

    source = params.model.source
    tables = key_tables(read_metrics(paths.inputs), demo=source == "demo")
    figures = filled_specs()
    write_report(paths.out, Document(f"vggbn run report (model.source: {source})", RUN_INTRO, tables, figures))
    return StageResult({"folder": os.fspath(paths.out), "tables": len(tables), "figures": len(figures)})


if __name__ == "__main__":
    stage.main(__doc__, run, inputs=stage.Many("metrics files the tables come from (metrics/<stage>.json)"),
               out="the report folder to write")
