"""Share DVC-tracked data through a real remote and get the same bytes back in a fresh clone.

(a) a folder on this machine, (b) SFTP to a real sshd on 127.0.0.1 logged into with a throwaway key, (c) S3 on
127.0.0.1 (moto's server, credentials checked), and what DVC says when an S3 remote is wrong or goes down. No mocks.
"""

import os
import re

import pytest

pytest.register_assert_rewrite("remotes", "s3server")  # before their import, so loading them as plugins below
from remotes import ENV, configure_local_remote, run   # does not warn

pytest_plugins = ["remotes", "s3server"]  # the `sshd` and `s3` fixtures


def make_project(repo):
    """Write the data to share (a file, and a folder with a subfolder) of random bytes; returns {path: bytes}."""
    repo.mkdir()
    data = {"blob.bin": os.urandom(8192), "images/a.bin": os.urandom(3000), "images/b.bin": os.urandom(5000),
            "images/sub/c.bin": os.urandom(100)}
    for name, content in data.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    return data


def round_trip(tmp_path, configure, env, remote_name, stored=None):
    """Push from one repo, pull in a fresh git clone, and compare bytes; `configure(repo)` sets the remote,
    `stored()` lists what the remote holds (default: the files under tmp_path/remote)."""
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
    stored = stored or (lambda: list((remote / "files" / "md5").rglob("*")))
    assert stored(), "push left the remote empty"
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


# --- S3 ---------------------------------------------------------------------------------------------------------

def dvc_errors(result) -> list[str]:
    """The `ERROR: ...` lines a failed DVC command printed (DVC ends each with its support link, not counted)."""
    assert result.returncode != 0, f"expected a failure:\n{result.stdout}\n{result.stderr}"
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR:")]


def s3_repo(tmp_path, s3, prefix: str, files: int = 0, **configure) -> tuple:
    """A committed DVC repo with the make_project data (and `files` more loose files) and an S3 remote."""
    repo = tmp_path / "repo"
    data = make_project(repo)
    for i in range(files):
        data[f"loose/{i:03d}.bin"] = os.urandom(4096)
        (repo / "loose").mkdir(exist_ok=True)
        (repo / f"loose/{i:03d}.bin").write_bytes(data[f"loose/{i:03d}.bin"])
    run(["git", "init", "-q", "-b", "main"], repo, env=s3.env)
    run(["dvc", "init", "-q"], repo, env=s3.env)
    run(["dvc", "add", "-q", "blob.bin", "images", *(name for name in data if name.startswith("loose/"))], repo,
        env=s3.env)
    s3.configure_dvc_remote(repo, prefix, **configure)
    run(["git", "add", "-A"], repo, env=s3.env)
    run(["git", "commit", "-qm", "data"], repo, env=s3.env)
    return repo, data


def pull_in_fresh_clone(tmp_path, repo, s3, data: dict) -> None:
    """`dvc pull` in a new git clone (empty cache) gets every file back, byte for byte."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env=s3.env)
    run(["dvc", "pull"], clone, env=s3.env)
    assert {name: (clone / name).read_bytes() for name in data} == data
    assert "Cache and remote 's3' are in sync" in run(["dvc", "status", "-c"], clone, env=s3.env).stdout


def test_s3_remote_round_trip(tmp_path, s3):
    """Credentials in .dvc/config.local (not committed, not in the environment); endpoint in .dvc/config."""
    prefix = "round-trip"
    round_trip(tmp_path, lambda repo: s3.configure_dvc_remote(repo, prefix, credentials="local"),
               s3.env_without_credentials, "s3", stored=lambda: s3.keys(prefix))
    repo = tmp_path / "repo"
    committed = run(["git", "show", "HEAD:.dvc/config"], repo).stdout
    assert f"endpointurl = {s3.endpoint}" in committed and s3.secret_access_key not in committed
    assert run(["git", "ls-files", ".dvc/config.local"], repo).stdout == ""  # DVC's .dvc/.gitignore lists it
    assert s3.secret_access_key in (repo / ".dvc" / "config.local").read_text()


# DVC's own lines. Its first request asks for a directory's .dir object (HeadObject) where the data has a directory:
# a HEAD answer has no body, so a refused key reads as a bare 403; where it lists first, S3's own error code shows.
REFUSED_HEAD = ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject operation: "
                "Forbidden")
WRONG_SECRET = ("ERROR: unexpected error - The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.: An error occurred (SignatureDoesNotMatch) when calling "
                "the ListObjectsV2 operation: The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.")
UNKNOWN_KEY = ("ERROR: unexpected error - The AWS Access Key Id you provided does not exist in our records.: An error "
               "occurred (InvalidAccessKeyId) when calling the ListObjectsV2 operation: The AWS Access Key Id you "
               "provided does not exist in our records.")
NO_CREDENTIALS = "ERROR: unexpected error - Unable to locate credentials"


def test_s3_wrong_credentials_end_in_one_line_and_lose_nothing(tmp_path, s3):
    prefix = "wrong-credentials"
    repo, data = s3_repo(tmp_path, s3, prefix, files=3)
    wrong_secret = {**s3.env, "AWS_SECRET_ACCESS_KEY": "not-" + s3.secret_access_key}
    unknown_key = {**s3.env, "AWS_ACCESS_KEY_ID": "AKIA" + "X" * 16}

    def push_errors(env, *targets):
        return dvc_errors(run(["dvc", "push", *targets], repo, env=env, check=False))

    assert push_errors(wrong_secret) == push_errors(unknown_key) == [REFUSED_HEAD]  # `images` is a directory
    loose = ["blob.bin", "loose/000.bin", "loose/001.bin"]
    assert push_errors(wrong_secret, *loose) == [WRONG_SECRET]
    assert push_errors(unknown_key, *loose) == [UNKNOWN_KEY]
    assert push_errors(s3.env_without_credentials) == [NO_CREDENTIALS]
    assert s3.keys(prefix) == []  # refused before anything was written

    # Nothing lost: with the right key the same repo pushes everything, and a fresh clone gets it back.
    assert "files pushed" in run(["dvc", "push"], repo, env=s3.env).stdout
    pull_in_fresh_clone(tmp_path, repo, s3, data)


def test_s3_missing_bucket_ends_in_one_line_and_loses_nothing(tmp_path, s3):
    bucket, prefix = "vggbn-made-later", "missing-bucket"
    buckets = s3.buckets()
    repo, data = s3_repo(tmp_path, s3, prefix, bucket=bucket)
    errors = dvc_errors(run(["dvc", "push"], repo, env=s3.env, check=False))
    assert errors == ["ERROR: unexpected error - The specified bucket does not exist: An error occurred "
                      "(NoSuchBucket) when calling the ListObjectsV2 operation: The specified bucket does not "
                      "exist"], errors
    assert s3.buckets() == buckets  # DVC does not make buckets

    # Nothing lost: once the bucket exists, the same repo pushes everything, and a fresh clone gets it back.
    s3.client().create_bucket(Bucket=bucket)
    assert "files pushed" in run(["dvc", "push"], repo, env=s3.env).stdout
    pull_in_fresh_clone(tmp_path, repo, s3, data)


# Each object whose upload finds the server gone costs botocore's retries (5 tries, up to 15 s of backoff), so the
# server stops with a few objects to go: the repo's loose files, which DVC uploads after every directory's.
LOOSE_FILES, LEFT_WHEN_STOPPED = 24, 10


def test_s3_server_stopped_mid_push_then_push_again_completes(tmp_path, s3):
    prefix = "stopped-mid-push"
    repo, data = s3_repo(tmp_path, s3, prefix, files=LOOSE_FILES)
    objects = sum(path.is_file() for path in (repo / ".dvc" / "cache" / "files" / "md5").rglob("*"))
    s3.server.stop_after_puts(objects - LEFT_WHEN_STOPPED + 1)
    failed = run(["dvc", "push"], repo, env=s3.env, check=False)
    assert s3.server.stopped.is_set()
    errors = dvc_errors(failed)
    assert re.fullmatch(r"ERROR: failed to push data to the cloud - \d+ files failed to upload", errors[-1]), errors
    for line in errors[:-1]:  # one line per file before it, naming the endpoint that went away
        assert re.fullmatch(rf"ERROR: failed to transfer '\w+' - Could not connect to the endpoint URL: "
                            rf'"{re.escape(s3.endpoint)}/{s3.bucket}/{prefix}/files/md5/\w\w/\w+"', line), line
    failed_count = int(errors[-1].split(" - ")[1].split()[0])

    s3.server.start()  # back on the same port, with what it had stored
    stored = len(s3.keys(prefix))
    assert 0 < stored < objects and objects - stored <= failed_count
    pushed = run(["dvc", "push"], repo, env=s3.env).stdout
    assert f"{objects - stored} files pushed" in pushed, pushed  # only what was missing
    assert len(s3.keys(prefix)) == objects
    pull_in_fresh_clone(tmp_path, repo, s3, data)
