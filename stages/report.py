"""Stage report: the run's key numbers as tables and every plot of dvc.yaml as a picture, in report/index.html
(inline SVG: no script, no network) and report/README.md (with PNGs in report/figures/)."""

import argparse

from vggbn.runner import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, nargs="+", metavar="JSON",
                        help="metrics files the tables come from (metrics/<stage>.json)")
    parser.add_argument("--out", required=True, help="the report folder to write")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.pages.report import run_report

    return run_report(metrics=args.metrics, out_dir=args.out, model_source=params.model.source)


if __name__ == "__main__":
    stage.run(main)
