"""Stage plots_template: the HTML template `dvc plots show` and `dvc plots diff` fill, with Vega, Vega-Lite and
Vega-Embed inlined from the installed vl-convert-python, so the plot pages draw with no network; named in
.dvc/config.local (the committed .dvc/config names .dvc/plots-fallback.html, which every clone has)."""

import os

from vggbn.runner import stage


def run(paths, params, dvc_dir: str | os.PathLike = ".dvc"):
    """Write the offline template and point DVC's local config at it; the template's path and what was done to the
    config, as a sentence (no metrics file: for the stage's summary). Reads no params, but a bad params.yaml still
    fails here, in the first stage, within a second."""
    from vggbn.pages.plots_template import point_dvc_at, write_template
    from vggbn.storage.results import StageResult

    write_template(paths.out)
    return StageResult({"template": os.fspath(paths.out), "config": point_dvc_at(paths.out, dvc_dir)})


if __name__ == "__main__":
    stage.main(__doc__, run, out="the template to write (HTML, with {plot_divs})")
