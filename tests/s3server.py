"""A real S3 protocol server on 127.0.0.1 for DVC remotes: moto's standalone server, with credentials checked.

Use the `s3` fixture from a test module with `pytest_plugins = ["s3server"]`, and run DVC through `run` with the
server's `env`. DVC talks to it through the same s3fs / aiobotocore / botocore stack a user's `dvc push` uses, over
HTTP, and the server checks every request's SigV4 signature against an IAM access key it issued (moto's
`reset-auth`): a wrong secret is refused as AWS would refuse it.

`S3Server.stop()` stops the server for real: moto's own `ThreadedMotoServer.stop()` leaves the listening socket
open (a client then waits for its connect timeout) and keeps serving open keep-alive connections; here the
listening socket is closed and every open connection is cut, so a client sees what it sees when a store goes down.
What was stored stays (moto keeps it in this process), as a real store's disks would; `start()` again serves it on
the same port. `stop_after_puts(n)` stops it when the n-th PUT arrives, before moto sees that PUT.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from project import ENV as PROJECT_ENV
from project import run

REGION = "us-east-1"


def _server_classes():
    """werkzeug's threaded server and request handler (moto's own), adapted; imported only once moto is there."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs) -> None:  # no line per request on the test's stderr
            pass

    class Server(ThreadedWSGIServer):
        """Remembers its open connections, so that stopping can cut them."""

        def __init__(self, *args, **kwargs):
            self.connections: set[socket.socket] = set()
            self.connections_lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def process_request(self, request, client_address):
            with self.connections_lock:
                self.connections.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request):
            with self.connections_lock:
                self.connections.discard(request)
            super().shutdown_request(request)

        def cut_connections(self) -> None:
            with self.connections_lock:
                for connection in self.connections:
                    try:
                        connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    return Server, Handler


class S3Server:
    """moto's S3 on 127.0.0.1 (werkzeug, a thread per connection), stoppable for real and restartable."""

    def __init__(self, port: int = 0):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.app = DomainDispatcherApplication(create_backend_app)
        self.port = port
        self.puts = 0  # PUT requests seen since start() or stop_after_puts()
        self.stop_at_put: int | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._server = self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        Server, Handler = _server_classes()
        self._server = Server("127.0.0.1", self.port, self._wsgi, handler=Handler)
        self.port = self._server.server_address[1]  # the same port again after a restart
        self.puts, self.stop_at_put = 0, None
        self.stopped.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the port, cut every open connection (requests in flight get no answer)."""
        self.stopped.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # from any thread but the one running serve_forever
        server.server_close()
        server.cut_connections()
        self._thread.join()

    def stop_after_puts(self, count: int) -> None:
        """Stop the server when the `count`-th PUT request from now arrives, before moto handles it."""
        with self._lock:
            self.puts, self.stop_at_put = 0, count

    def _wsgi(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT":
            with self._lock:
                self.puts += 1
                stop_now = self.puts == self.stop_at_put
            if stop_now:
                self.stopped.set()
                threading.Thread(target=self.stop, daemon=True).start()  # meanwhile this request is dropped below
        if self.stopped.is_set():  # this request, and any after it, never reaches the store
            try:
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            except OSError:  # already cut by stop()
                pass
            start_response("503 Service Unavailable", [("Content-Length", "0")])  # never sent: the socket is shut
            return []
        return self.app(environ, start_response)


@dataclass
class S3Remote:
    server: S3Server
    bucket: str
    access_key_id: str
    secret_access_key: str
    env: dict[str, str] = field(repr=False)  # credentials in AWS_* variables, no ~/.aws files

    @property
    def endpoint(self) -> str:
        return self.server.url

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    @property
    def env_without_credentials(self) -> dict[str, str]:
        return {key: value for key, value in self.env.items()
                if key not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

    def keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """Every object key in the bucket (ours by default) under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def buckets(self) -> list[str]:
        return sorted(bucket["Name"] for bucket in self.client().list_buckets()["Buckets"])

    def configure_dvc_remote(self, repo_dir: Path, prefix: str, name: str = "s3", bucket: str | None = None,
                             credentials: str = "env") -> None:
        """As docs/remotes.md tells a user: the URL and endpoint in .dvc/config (committed); the credentials from the
        environment (`env`, the default) or in .dvc/config.local (`local`, never committed)."""
        url = f"s3://{bucket or self.bucket}/{prefix}"
        run(["dvc", "remote", "add", "-d", "-f", name, url], repo_dir, env=self.env)
        run(["dvc", "remote", "modify", name, "endpointurl", self.endpoint], repo_dir, env=self.env)
        if credentials == "local":
            run(["dvc", "remote", "modify", "--local", name, "access_key_id", self.access_key_id], repo_dir,
                env=self.env)
            run(["dvc", "remote", "modify", "--local", name, "secret_access_key", self.secret_access_key],
                repo_dir, env=self.env)


def _without_aws_settings(env: dict[str, str], folder: Path) -> dict[str, str]:
    """No developer's AWS profile, endpoint or token may change where or as whom the test connects: AWS_*
    variables dropped, and empty config and credentials files (DVC refuses a config file that is not there)."""
    clean = {key: value for key, value in env.items() if not key.startswith("AWS_")}
    for name in ("config", "credentials"):
        (folder / name).write_text("")
    return {**clean, "AWS_CONFIG_FILE": str(folder / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"), "AWS_EC2_METADATA_DISABLED": "true"}


def _issue_access_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed s3:* and its access key, made while the server still accepts anything."""
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="vggbn-test")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="vggbn-test", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="vggbn-test")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _aws_canonical_query(url: str) -> str:
    """`url` with its query string quoted as a SigV4 client signs it (every byte but A-Z a-z 0-9 - _ . ~)."""
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    pairs = [pair.partition("=") for pair in parts.query.split("&")] if parts.query else []
    query = "&".join(quote(unquote(key), safe="-_.~") + sep + quote(unquote(value), safe="-_.~")
                     for key, sep, value in pairs)
    return urlunsplit(parts._replace(query=query))


@contextmanager
def _signatures_checked_on_canonical_queries():
    """Work around moto's signature check of S3 requests (moto issue 5948): it rebuilds the signed request from
    werkzeug's decoded URL, so `prefix=files/md5/` is checked where the client signed `prefix=files%2Fmd5%2F` and
    every listing under a prefix (DVC's `status -c`, `push`, `pull`) is refused as SignatureDoesNotMatch. Here moto
    checks the query as clients sign it; its own check (keys, signatures, policies) is unchanged."""
    from moto.core.authorization import ActionAuthenticatorMixin

    original = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def check_canonical(self, iam_request_cls, resource="*"):
        uri = self.uri
        self.uri = _aws_canonical_query(uri)
        try:
            return original(self, iam_request_cls, resource)
        finally:
            self.uri = uri

    ActionAuthenticatorMixin._authenticate_and_authorize_action = check_canonical
    try:
        yield
    finally:
        ActionAuthenticatorMixin._authenticate_and_authorize_action = original


def _require_auth(endpoint: str, enforce: bool) -> None:
    """moto's switch: from now on every request must be signed with a key it issued (or: anything goes)."""
    import urllib.request

    body = b"0" if enforce else b"inf"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=body, method="POST",
                                                  headers={"Content-Type": "text/plain"}),
                           timeout=10).read()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with one bucket and one access key (in `env`); credentials are checked."""
    for module in ("moto", "flask", "flask_cors", "dvc_s3"):
        if importlib.util.find_spec(module) is None:
            message = f"{module} not installed: pip install -e '.[test]' (moto's server, dvc[s3])"
            if os.environ.get("CI"):  # CI installs the test extra: a skip there would hide the S3 tests
                raise RuntimeError(message)
            pytest.skip(message)
    server = S3Server()
    server.start()
    with _signatures_checked_on_canonical_queries():
        yield from _serve_bucket(server, tmp_path_factory)


def _serve_bucket(server: S3Server, tmp_path_factory):
    try:
        access_key_id, secret = _issue_access_key(server.url)
        _require_auth(server.url, enforce=True)
        env = {**_without_aws_settings(PROJECT_ENV, tmp_path_factory.mktemp("aws")),
               "AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret}
        remote = S3Remote(server=server, bucket="vggbn-test", access_key_id=access_key_id,
                          secret_access_key=secret, env=env)
        remote.client().create_bucket(Bucket=remote.bucket)
        yield remote
    finally:
        if not server.running:  # a test stopped it: start it again to switch moto's checks back off
            server.start()
        _require_auth(server.url, enforce=False)
        server.stop()
