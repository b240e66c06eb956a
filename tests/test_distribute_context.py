"""The distributed context (`vggbn.cluster.distribute`): the one split rule, chief-only writing said one way, and
its TensorFlow-free import, which lets `vggbn.storage` use it."""

import json
import subprocess
import sys

import pytest

from vggbn.cluster import distribute


@pytest.mark.parametrize("count", [0, 1, 5, 7, 23, 64])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_split_covers_every_row_once_in_order_in_near_equal_runs(count, parts):
    runs = distribute.split(count, parts)
    assert len(runs) == parts
    assert [row for run in runs for row in range(count)[run]] == list(range(count))
    sizes = [run.stop - run.start for run in runs]
    assert max(sizes) - min(sizes) <= 1
    assert count < parts or min(sizes) >= 1


def test_a_workers_replicas_split_its_rows_by_the_same_rule():
    """What `training.Trainer` gives each replica: the worker's part, split again; together the whole batch."""
    rows = [row for worker in distribute.split(23, 2) for replica in distribute.split(worker.stop - worker.start, 3)
            for row in range(worker.start + replica.start, worker.start + replica.stop)]
    assert rows == list(range(23))


def cluster_env(monkeypatch, index, workers=2):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{1000 + i}" for i in range(workers)]},
                                                "task": {"type": "worker", "index": index}}))
    monkeypatch.delenv("VGGBN_STRATEGY", raising=False)


def test_shares_follow_the_worker_this_process_is(monkeypatch):
    assert distribute.shares(23) == [23] and distribute.my_share(23) == slice(0, 23)
    cluster_env(monkeypatch, 1)
    assert distribute.shares(23) == [11, 12] and distribute.my_share(23) == slice(11, 23)


def test_chief_only_writes_on_the_chief_and_skips_every_other_worker(monkeypatch, tmp_path):
    @distribute.chief_only
    def write(path, text):
        path.write_text(text)
        return "written"

    assert write(tmp_path / "a", "x") == "written" and (tmp_path / "a").read_text() == "x"
    cluster_env(monkeypatch, 1)
    assert write(tmp_path / "b", "x") is None and not (tmp_path / "b").exists()
    cluster_env(monkeypatch, 0)
    assert write(tmp_path / "c", "x") == "written"


def test_the_context_and_the_storage_that_uses_it_import_no_tensorflow():
    code = ("import sys\nimport vggbn.cluster.distribute, vggbn.storage.feed, vggbn.storage.results, "
            "vggbn.storage.statistics\nprint(','.join(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
