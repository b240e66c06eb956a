"""Real DVC remotes for tests: a local folder, and an SFTP server (`sshd` on 127.0.0.1) with throwaway keys.

Use the `sshd` fixture from a test module with `pytest_plugins = ["remotes"]`, and run DVC and git through `run`
with the server's `env`, whose HOME is a throwaway folder: asyncssh reads `~/.ssh/config`, and a developer's
(a `Host *` ProxyJump, say) must not change how the test connects. Host keys: DVC has no known_hosts setting and
sshfs connects with `known_hosts=None`, so today no host key is checked at all; the throwaway
`~/.ssh/known_hosts` pins this server's key anyway, so the test keeps passing if sshfs starts checking.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from project import run

SSHD = Path("/usr/sbin/sshd")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
ENV.pop("SSH_AUTH_SOCK", None)  # an agent could log in with some other key and hide a wrong `keyfile`


def configure_local_remote(repo_dir: Path, remote_path: Path, name: str = "local",
                           env: dict[str, str] | None = None) -> None:
    """Make a folder on this machine the default remote (`-f`: a clone may already have it in .dvc/config)."""
    run(["dvc", "remote", "add", "-d", "-f", name, str(Path(remote_path).resolve())], repo_dir, env=env)


@dataclass
class SSHServer:
    host: str
    port: int
    user: str
    key: Path  # the client's private key, authorized on this server only
    home: Path  # HOME for DVC processes: .ssh/known_hosts holds this server's host key
    log: Path  # sshd's own log (-e), to read when a login fails
    env: dict[str, str] = field(repr=False)

    def url(self, remote_path: Path) -> str:
        return f"ssh://{self.host}:{self.port}{Path(remote_path).resolve()}"

    def configure_dvc_remote(self, repo_dir: Path, remote_path: Path, name: str = "ssh") -> None:
        """The URL is shareable (.dvc/config, committed); who logs in with which key is per user (--local)."""
        run(["dvc", "remote", "add", "-d", "-f", name, self.url(remote_path)], repo_dir, env=self.env)
        run(["dvc", "remote", "modify", "--local", name, "user", self.user], repo_dir, env=self.env)
        run(["dvc", "remote", "modify", "--local", name, "keyfile", str(self.key)], repo_dir, env=self.env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    """A new passphrase-less ed25519 key pair; returns the public key line without its comment."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vggbn-test", "-f", str(path)],
                   check=True, capture_output=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that accepts only a throwaway key, serving SFTP as the current user."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} not found: run .ci/install-sshd (installs openssh-server)")
    if importlib.util.find_spec("dvc_ssh") is None:
        pytest.skip("dvc-ssh not installed: pip install 'dvc[ssh]'")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not found (openssh-client)")

    tmp = tmp_path_factory.mktemp("sshd")
    host_key, client_key = tmp / "host_ed25519", tmp / "client_ed25519"
    host_pub = _keygen(host_key)
    (tmp / "authorized_keys").write_text(_keygen(client_key) + "\n")
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    port = _free_port()
    # asyncssh looks up "[host]:port" for a non-default port, like OpenSSH.
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")

    config = tmp / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no",  # pytest's tmp folders are not owned and moded the way sshd insists on for ~/.ssh
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # tests may run as root (CI containers); key-only is allowed
        "UsePAM no",  # PAM would want a system login setup; keys alone are enough here
        "Subsystem sftp internal-sftp",  # DVC talks SFTP; internal-sftp needs no sftp-server binary path
    ]) + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir, absent without the service

    log = tmp / "sshd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited ({process.returncode}):\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd not listening on 127.0.0.1:{port} after 10 s:\n{log.read_text()}")
                time.sleep(0.05)
        yield SSHServer(host="127.0.0.1", port=port, user=getpass.getuser(), key=client_key, home=home, log=log,
                        env={**ENV, "HOME": str(home)})
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
