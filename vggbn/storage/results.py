"""What a stage hands back (its metrics and plot tables) and the one writer that puts them where dvc.yaml declares."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

from vggbn.cluster.distribute import chief_only
from vggbn.storage.atomic import atomic_path
from vggbn.storage.tables import PlotTable, csv_text, write_csv, write_json

Plot = Union[PlotTable, dict[str, PlotTable]]  # one CSV file, or a folder of `<name>.csv` files (one plot each)


@dataclass
class StageResult:
    """What a stage's library entry (`run_<stage>`) hands back: its metrics and its plot tables by name."""
    metrics: dict
    plots: dict[str, Plot] = field(default_factory=dict)


@chief_only
def write_result(result: StageResult, *, metrics: str | os.PathLike | None = None,
                 plots: dict[str, str | os.PathLike] | None = None) -> None:
    """Write a stage's metrics (JSON) and each named plot to the path its dvc.yaml declares.

    A folder of tables is written whole or not at all; every plot named in `plots` must be in the result.
    Under a multi-worker strategy only the chief writes.
    """
    for name, path in (plots or {}).items():
        plot = result.plots[name]
        if isinstance(plot, PlotTable):
            write_csv(path, plot.header, plot.rows)
            continue
        with atomic_path(path) as folder:
            folder.mkdir()
            for table_name, table in plot.items():
                (folder / f"{table_name}.csv").write_text(csv_text(table.header, table.rows), encoding="utf-8")
    if metrics is not None:
        write_json(metrics, result.metrics)
