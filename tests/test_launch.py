"""Where a stage runs: the cluster read from the environment, the chief, and the launcher (real processes)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vggbn.runner import launch
from vggbn.cluster import watchdog
from vggbn.cluster import environment, slurm
from vggbn.cluster.environment import Cluster, DistributeError
from vggbn.runner import gpus
from vggbn.runner.gpus import LaunchError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TF_CONFIG", "VGGBN_")):
            monkeypatch.delenv(key)
    return monkeypatch


def tf_config(index, workers=2, chief=False, kind="worker"):
    cluster = {"worker": [f"127.0.0.1:{1000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:999"]
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_no_cluster_described_means_one_process_that_writes(env):
    assert environment.cluster() == Cluster(1, 0, "") and environment.is_chief() and not environment.multi_worker()


@pytest.mark.parametrize("config, expected", [
    (tf_config(0), Cluster(2, 0, "TF_CONFIG")), (tf_config(1), Cluster(2, 1, "TF_CONFIG")),
    (tf_config(0, chief=True), Cluster(3, 1, "TF_CONFIG")), (tf_config(0, chief=True, kind="chief"),
                                                            Cluster(3, 0, "TF_CONFIG"))])
def test_tf_config_names_the_workers_and_the_chief(env, config, expected):
    env.setenv("TF_CONFIG", config)
    assert environment.cluster() == expected and environment.is_chief() == (expected.index == 0)


def test_a_slurm_job_step_of_several_tasks_is_a_cluster(env):
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_STEP_NUM_TASKS", "4")
    env.setenv("SLURM_PROCID", "3")
    assert environment.cluster() == Cluster(4, 3, "slurm") and not environment.is_chief()
    env.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert environment.cluster() == Cluster(1, 0, "")


@pytest.mark.parametrize("strategy", ["none", "mirrored"])
def test_a_process_told_to_run_alone_in_a_described_cluster_is_refused(env, strategy):
    env.setenv("TF_CONFIG", tf_config(1))  # else every process would take itself for the chief
    env.setenv("VGGBN_STRATEGY", strategy)
    with pytest.raises(DistributeError, match=f"^VGGBN_STRATEGY={strategy} runs in one process, but TF_CONFIG "
                                              "describes 2 workers"):
        environment.is_chief()


def test_tf_config_inside_a_slurm_step_is_refused(env):
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_STEP_NUM_TASKS", "2")
    env.setenv("SLURM_PROCID", "1")
    env.setenv("TF_CONFIG", tf_config(0))  # inherited: would make every task worker 0
    with pytest.raises(DistributeError, match="^TF_CONFIG is set inside a Slurm job step of 2 tasks"):
        environment.cluster()


def test_two_slurm_steps_on_one_node_get_distinct_ports():
    ports = [slurm.step_ports(job, step, slurm.SLURM_PORT_BASE) for job, step in
             [(41, 0), (41, 1), (41, 2), (42, 0), (7, 0)]]
    assert all(len(p) == slurm.PORTS_PER_STEP and p.stop <= 32768 for p in ports)  # below the ephemeral ports
    assert len({p.start for p in ports}) == len(ports) and all(p.start % 64 == ports[0].start % 64 for p in ports)


@pytest.mark.parametrize("name, value, message", [
    ("VGGBN_STRATEGY", "tpu", "VGGBN_STRATEGY='tpu': expected one of auto, none, mirrored, multi_worker"),
    ("TF_CONFIG", "{not json", "TF_CONFIG: not a cluster description"),
    ("TF_CONFIG", tf_config(0, kind="ps"), "TF_CONFIG: task type 'ps' does not run stages")])
def test_a_bad_environment_is_one_line_naming_the_variable(env, name, value, message):
    env.setenv(name, value)
    with pytest.raises(DistributeError) as caught:
        environment.cluster()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.parametrize("value, expected", [("local:2", launch.Local(2, None)), ("local:4:1", launch.Local(4, 1)),
                                             ("srun --kill-on-bad-exit=1", ["srun", "--kill-on-bad-exit=1"])])
def test_launch_values(value, expected):
    assert launch.parse(value) == expected


@pytest.mark.parametrize("value", ["local:", "local:0", "local:two", "local:2:1:1", "  "])
def test_a_bad_launch_value_is_refused(value):
    with pytest.raises(LaunchError, match="VGGBN_LAUNCH"):
        launch.parse(value)


def test_a_launched_process_does_not_launch_again(env):
    env.setenv("VGGBN_LAUNCH", "local:2")
    assert launch.wanted() == "local:2"
    env.setenv("VGGBN_LAUNCHED", "1")
    assert launch.wanted() is None


def test_local_workers_get_distinct_ports_and_their_index(env, tmp_path):
    script = ("import json, os, sys; c = json.loads(os.environ['TF_CONFIG']); "
              "open(sys.argv[1] + str(c['task']['index']), 'w').write(json.dumps([c, os.environ['TF_NUM_INTRAOP_THREADS'], "
              "sorted(os.sched_getaffinity(0))]))")
    cores = len(os.sched_getaffinity(0))
    workers = min(2, cores)
    assert launch.start_local_workers([sys.executable, "-c", script, str(tmp_path / "w")], workers, 1) == 0
    seen = [json.loads((tmp_path / f"w{i}").read_text()) for i in range(workers)]
    addresses = seen[0][0]["cluster"]["worker"]
    assert len(set(addresses)) == workers and all(s[0]["cluster"]["worker"] == addresses for s in seen)
    assert [s[1] for s in seen] == ["1"] * workers
    assert [len(s[2]) for s in seen] == [1] * workers and len({s[2][0] for s in seen}) == workers


def test_without_prctl_and_affinity_the_local_workers_still_start(env, tmp_path):
    """Where the C library has no prctl and os no sched_{get,set}affinity (macOS, the BSDs), the launcher starts the
    workers all the same: chosen by capability, forced here on Linux by removing the calls."""
    script = ("import json, os, sys; c = json.loads(os.environ['TF_CONFIG']); "
              "open(sys.argv[1] + str(c['task']['index']), 'w').write(json.dumps(c['task']))")
    env.setattr(launch, "_libc", lambda: None)
    env.delattr("os.sched_getaffinity")
    env.delattr("os.sched_setaffinity")
    assert launch.usable_cores() == list(range(os.cpu_count()))
    assert launch.start_local_workers([sys.executable, "-c", script, str(tmp_path / "w")], 2, 1) == 0
    assert [json.loads((tmp_path / f"w{i}").read_text())["index"] for i in range(2)] == [0, 1]


def test_a_failing_worker_stops_the_others_and_its_status_is_returned(env, tmp_path, capsys):
    # worker 1 fails at once; worker 0 would run for a minute: it is stopped, and worker 1's output is shown
    script = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
              "print('worker', i, 'says goodbye', flush=True); time.sleep(60) if i == 0 else sys.exit(3)")
    env.setattr(tempfile, "tempdir", str(tmp_path))  # where the other workers' logs go
    start = time.monotonic()
    assert launch.start_local_workers([sys.executable, "-c", script], 2) == 3
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "worker 1 of 2 failed (exit status 3)" in err and "worker 1 says goodbye" in err
    assert not list(tmp_path.iterdir())  # the log is removed


def test_more_cores_than_there_are_is_refused(env):
    with pytest.raises(LaunchError, match="cores"):
        launch.start_local_workers([sys.executable, "-c", "pass"], 2, 10_000)


def test_vggbn_launch_runs_the_command_with_the_launch_set(env, tmp_path):
    done = subprocess.run([sys.executable, "-m", "vggbn.cli", "launch", "--workers", "3", "--cores-per-worker", "1",
                           "--", sys.executable, "-c", "import os; print(os.environ['VGGBN_LAUNCH'])"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "local:3:1"
    done = subprocess.run([sys.executable, "-m", "vggbn.cli", "launch", "--workers", "2"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: launch: expected a command to run")


@pytest.mark.parametrize("text, counts", [("2", [2]), ("2(x3),1", [2, 2, 2, 1]), ("1,3(x2)", [1, 3, 3])])
def test_slurm_task_counts_per_node(text, counts):
    assert slurm.tasks_per_node(text) == counts


@pytest.mark.skipif(not shutil.which("scontrol"), reason="Slurm's scontrol is not installed (.ci/install-slurm)")
def test_a_slurm_step_is_its_nodes_in_slurms_order_and_its_tasks_in_blocks(env):
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_STEP_NUM_TASKS", "4")
    env.setenv("SLURM_STEP_NODELIST", "node[9-10]")
    env.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)")
    env.setenv("SLURM_JOB_ID", "5")
    env.setenv("VGGBN_PORT_BASE", "20000")
    for rank, local, node in [(0, 0, "node9"), (3, 1, "node10")]:
        env.setenv("SLURM_PROCID", str(rank))
        env.setenv("SLURM_LOCALID", str(local))
        env.setenv("SLURMD_NODENAME", node)
        base = slurm.step_ports(5, 0, 20000).start
        assert slurm.slurm_addresses() == [f"node9:{base}", f"node9:{base + 1}", f"node10:{base}", f"node10:{base + 1}"]
    env.setenv("SLURM_PROCID", "1")  # local id 1 on node10 is rank 3 in blocks: a cyclic placement
    with pytest.raises(DistributeError, match="--distribution=block"):
        slurm.slurm_addresses()


def test_slurm_tasks_keep_their_share_of_the_gpus(env):
    env.setattr(gpus, "expand_hostlist", lambda nodelist: ["a", "b"])  # no scontrol needed for this one
    env.setenv("SLURM_STEP_ID", "0")
    env.setenv("SLURM_STEP_NUM_TASKS", "4")
    env.setenv("SLURM_STEP_NODELIST", "a,b")
    env.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)")
    env.setenv("SLURMD_NODENAME", "b")
    env.setenv("SLURM_PROCID", "3")
    env.setenv("SLURM_LOCALID", "1")
    env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    gpus.claim_gpus()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    env.setenv("CUDA_VISIBLE_DEVICES", "0")
    env.setenv("SLURM_GPUS_PER_TASK", "1")  # Slurm bound the GPUs itself: left alone
    gpus.claim_gpus()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.parametrize("settings, message", [
    ({"VGGBN_STRATEGY": "mirrored", "TF_CONFIG": tf_config(1)},
     "VGGBN_STRATEGY=mirrored runs in one process, but TF_CONFIG describes 2 workers"),
    ({"VGGBN_STRATEGY": "none", "TF_CONFIG": tf_config(0)},
     "VGGBN_STRATEGY=none runs in one process, but TF_CONFIG describes 2 workers"),
    ({"VGGBN_STRATEGY": "none", "VGGBN_LAUNCH": "local:2"},
     "VGGBN_STRATEGY=none runs in one process, but VGGBN_LAUNCH='local:2' starts several workers"),
    ({"VGGBN_STRATEGY": "mirrored", "VGGBN_LAUNCH": "srun -n 2"},
     "VGGBN_STRATEGY=mirrored runs in one process, but VGGBN_LAUNCH='srun -n 2' starts several workers")])
def test_a_strategy_the_environment_contradicts_is_one_line(env, settings, message):
    for key, value in settings.items():
        env.setenv(key, value)
    with pytest.raises(DistributeError) as caught:
        launch.check_strategy_fits()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    if "VGGBN_LAUNCH" in settings:  # refused before any worker starts
        with pytest.raises(DistributeError):
            launch.relaunch([sys.executable, "-c", "raise SystemExit(9)"])


def test_a_worker_hung_after_the_others_finished_is_stopped_and_named(env, tmp_path, capsys):
    env.setenv("VGGBN_COLLECTIVE_TIMEOUT", "2")
    env.setattr(tempfile, "tempdir", str(tmp_path))
    script = ("import json, os, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
              "time.sleep(300) if i == 1 else None")
    start = time.monotonic()
    assert launch.start_local_workers([sys.executable, "-c", script], 2) == 124
    assert time.monotonic() - start < 30
    assert "error: worker 1 of 2 did not finish within 2 s (VGGBN_COLLECTIVE_TIMEOUT) of the others: hung, " \
           "stopped" in capsys.readouterr().err


FAULTY_WORKER = """
import os, signal, sys, time
from vggbn.cluster import distribute
from vggbn.runner import launch, stage
distribute.strategy()
fault = os.environ["FAULT"] if distribute.cluster().index == 1 else None
def step(rows):
    if fault == "raises in a chief-led pass":
        raise ValueError("boom in a chief-led pass")
    yield rows
def work(step):
    for rows in ([0, 1], [2, 3]):
        list(step(rows))
    return "done"
def main():
    distribute.barrier()  # every worker here
    if fault == "stopped":
        os.kill(os.getpid(), signal.SIGSTOP)  # hung: alive, but never joins the next collective
    if fault == "raises before a barrier":
        raise ValueError("boom before a barrier")
    distribute.led_by_chief(work, step)
    distribute.barrier()
sys.exit(stage.exit_status(main))
"""


@pytest.mark.parametrize("fault, status, lines", [
    ("stopped", 124, ["error: worker 0 of 2: waited 5 s (VGGBN_COLLECTIVE_TIMEOUT) for worker 1 in a broadcast from "
                      "the chief: it is hung, dead or far too slow; ending the stage",
                      "worker 1 of 2 stopped (SIGSTOP or a debugger) when worker 0 failed: killed"]),
    ("raises before a barrier", 2, ["error: worker 1 of 2: ValueError: boom before a barrier",
                                    "worker 0 of 2 still running when worker 1 failed: stopped"]),
    ("raises in a chief-led pass", 2, ["error: worker 1 of 2: ValueError: boom in a chief-led pass"])])
def test_a_hung_or_failing_worker_ends_every_worker_with_one_line(env, tmp_path, capfd, fault, status, lines):
    """Real TensorFlow workers on 127.0.0.1, no per-collective timeout: a worker stopped between two collectives
    ends the stage within the watchdog's timeout (the waiting worker names it, the launcher kills it), and one
    that raises while the others wait in a collective ends it at once, naming itself."""
    env.setenv("VGGBN_COLLECTIVE_TIMEOUT", "5")
    env.setenv("FAULT", fault)
    env.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setenv("PYTHONPATH", str(ROOT))
    env.setattr(tempfile, "tempdir", str(tmp_path))
    start = time.monotonic()
    assert launch.start_local_workers([sys.executable, "-c", FAULTY_WORKER], 2) == status
    assert time.monotonic() - start < 60
    err = capfd.readouterr().err  # worker 0 writes to this process' stderr, the launcher shows worker 1's
    assert all(line in err for line in lines), err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err


def test_the_collective_timeout_takes_any_positive_number_or_off(env):
    for value, seconds in [("30", 30.0), ("0.5", 0.5), ("0", None), ("off", None)]:
        env.setenv("VGGBN_COLLECTIVE_TIMEOUT", value)
        assert watchdog.timeout() == seconds
    env.delenv("VGGBN_COLLECTIVE_TIMEOUT")
    assert watchdog.timeout() == 600
    for value in ("-1", "soon", "inf"):
        env.setenv("VGGBN_COLLECTIVE_TIMEOUT", value)
        with pytest.raises(watchdog.WatchdogError, match="VGGBN_COLLECTIVE_TIMEOUT"):
            watchdog.timeout()


def test_a_collective_error_is_told_by_its_reason_and_the_peer():
    from vggbn.runner import stage

    message = ("Graph execution error:\n\nDetected at node CollectiveReduceV2_1 defined at (most recent call last):\n"
               '  File "soak_worker.py", line 78, in <module>\n\nCollective ops is aborted by: Socket closed\n'
               "The error could be from a previous operation. Restart your program to reset.")
    assert stage._reason(message) == "Collective ops is aborted by: Socket closed"
    assert watchdog.peer(0, 2) == "worker 1" and watchdog.peer(2, 4) == "one of workers 0, 1, 3"
