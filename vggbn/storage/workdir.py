"""Work folders of long stages: resumable work in progress kept only while the recipe that made it is unchanged."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from vggbn.storage.atomic import remove_stale_partials
from vggbn.storage.tables import write_text

log = logging.getLogger(__name__)


def prepare_work(work_dir: str | os.PathLike, recipe: dict, stale: Sequence[str]) -> bool:
    """Keep a work folder's resumable work only if it was made by the same `recipe`; return whether it was kept.

    Long stages keep work in progress (chunks, checkpoints) under a work folder, stamped with the recipe (inputs'
    hashes and params) that made it. Work of another recipe (the files matching the `stale` glob patterns) is
    removed before the folder is stamped anew, so a kill in between never pairs old work with a new stamp.
    """
    work_dir = Path(work_dir)
    remove_stale_partials(work_dir, everything=True)  # only this stage writes here, one run at a time
    stamp, text = work_dir / "recipe.json", json.dumps(recipe, sort_keys=True)
    if stamp.is_file() and stamp.read_bytes() == text.encode():
        return True
    dropped = [child for pattern in stale for child in work_dir.glob(pattern)]
    if dropped:
        log.info("%s: dropping %d files of work in progress made by another recipe", work_dir, len(dropped))
    for child in dropped:
        child.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text(stamp, text)
    return False
