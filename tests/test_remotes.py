"""Share DVC-tracked data through a real remote and get the same bytes back in a fresh clone.

(a) a folder on this machine, (b) SFTP to a real sshd on 127.0.0.1 logged into with a throwaway key. No mocks.
"""

import os

import pytest

pytest.register_assert_rewrite("remotes")  # before its import, so loading it as a plugin below does not warn
from remotes import ENV, configure_local_remote, run

pytest_plugins = ["remotes"]  # the `sshd` fixture


def make_project(repo):
    """Write the data to share (a file, and a folder with a subfolder) of random bytes; returns {path: bytes}."""
    repo.mkdir()
    data = {"blob.bin": os.urandom(8192), "images/a.bin": os.urandom(3000), "images/b.bin": os.urandom(5000),
            "images/sub/c.bin": os.urandom(100)}
    for name, content in data.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    return data


def round_trip(tmp_path, configure, env, remote_name):
    """Push from one repo, pull in a fresh git clone, and compare bytes; `configure(repo)` sets the remote."""
    repo, clone, remote = tmp_path / "repo", tmp_path / "clone", tmp_path / "remote"
    data = make_project(repo)
    run(["git", "init", "-q", "-b", "main"], repo, env=env)
    run(["dvc", "init", "-q"], repo, env=env)
    run(["dvc", "add", "-q", "blob.bin", "images"], repo, env=env)
    configure(repo)
    run(["git", "add", "-A"], repo, env=env)  # the .dvc files and the remote's URL; --local settings stay untracked
    run(["git", "commit", "-qm", "data"], repo, env=env)

    # Before the push the remote lacks the data: shows `dvc status -c` really compares against it.
    assert "are in sync" not in run(["dvc", "status", "-c"], repo, env=env).stdout
    run(["dvc", "push"], repo, env=env)
    assert list((remote / "files" / "md5").rglob("*")), "push left the remote folder empty"
    assert f"Cache and remote '{remote_name}' are in sync" in run(["dvc", "status", "-c"], repo, env=env).stdout

    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env=env)
    assert not (clone / "blob.bin").exists()  # git carries only the .dvc pointers
    configure(clone)
    run(["dvc", "pull"], clone, env=env)
    assert {name: (clone / name).read_bytes() for name in data} == data
    assert sorted(p.relative_to(clone / "images").as_posix() for p in (clone / "images").rglob("*.bin")) == \
        sorted(name.removeprefix("images/") for name in data if name.startswith("images/"))
    assert f"Cache and remote '{remote_name}' are in sync" in run(["dvc", "status", "-c"], clone, env=env).stdout


def test_local_folder_remote_round_trip(tmp_path):
    round_trip(tmp_path, lambda repo: configure_local_remote(repo, tmp_path / "remote"), ENV, "local")


def test_ssh_remote_round_trip(tmp_path, sshd):
    round_trip(tmp_path, lambda repo: sshd.configure_dvc_remote(repo, tmp_path / "remote"), sshd.env, "ssh")
