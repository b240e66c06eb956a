"""The image folder is no DVC dependency: at 100k files a no-op `dvc repro` still takes seconds."""

import os
import time

import pytest
from PIL import Image

from project import copy_project, repro, run, set_param

pytestmark = pytest.mark.slow

FILES = 100_000


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """100k images in ImageNet layout: hard links to one small PNG per class (a file takes at most 65,000 links
    on ext4), so the folder costs inodes, not disk."""
    root = tmp_path_factory.mktemp("big")
    classes = [str(digit) for digit in range(7)]  # as many as the demo classifier's outputs
    sources = []
    for digit in classes:
        sources.append(root / f"source_{digit}.png")
        Image.new("RGB", (16, 16), (30 * int(digit), 30, 30)).save(sources[-1])
    for split, count in (("train", FILES - 7000), ("valid", 7000)):
        for i in range(count):
            folder = root / split / classes[i % 7]
            if i < 7:
                folder.mkdir(parents=True)
            os.link(sources[i % 7], folder / f"img_{i:06d}.png")
    for source in sources:
        source.unlink()
    return root


def test_no_op_repro_at_100k_files_takes_seconds(big_folder, tmp_path):
    project = copy_project(tmp_path)
    set_param(project, "data.root", str(big_folder))
    set_param(project, "sample.train", 70)
    set_param(project, "sample.valid", 14)
    assert "sample" in repro(project, "sample")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "sampled"], project)
    started = time.monotonic()
    ran = repro(project, "sample")
    elapsed = time.monotonic() - started
    assert ran == ["listing"]  # the listing is byte-identical, so sample does not rerun
    assert elapsed < 10, f"a no-op dvc repro over {FILES} files took {elapsed:.1f} s"
    print(f"no-op dvc repro over {FILES} files: {elapsed:.2f} s")
