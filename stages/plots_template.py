"""Stage plots_template: the HTML template `dvc plots show` and `dvc plots diff` fill, with Vega, Vega-Lite and
Vega-Embed inlined from the installed vl-convert-python, so the plot pages draw with no network; named in
.dvc/config.local (the committed .dvc/config names .dvc/plots-fallback.html, which every clone has)."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, out="the template to write (HTML, with {plot_divs})")
    stage.params()  # nothing read, but a bad params.yaml fails here, in the first stage, within a second

    from vggbn.pages.plots_template import run_plots_template

    return run_plots_template(out=args.out)


if __name__ == "__main__":
    stage.run(main)
