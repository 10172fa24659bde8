"""Tokens on every server, with real processes (issue 13, point 3): the real
``upgrader balancer serve`` and ``upgrader flags serve`` on loopback, spoken to over HTTP; the
other local user is ``nobody`` (through ``runuser``; the tests run as root, which is why the
servers check a token file's mode bits and not access()).

- the balancer's admin API always needs a token: without ``--token-file`` one is generated
  (0600 in a 0700 folder, its path printed), and another local user can neither read it nor
  put the service into maintenance;
- a token file group or others may read (0644) is refused, exit 2, naming the file, its mode
  and the ``chmod 600`` fix; the same for ``flags serve --token-file``;
- the Bearer scheme is case-insensitive (``bearer``, ``BEARER``; RFC 9110 section 11.1);
- the balancer's client (provider ``builtin``) finds the generated token by the admin port;
- ``flags serve`` without a token generates one too.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from upgrader.flags.loader import loads
from upgrader.flags.store import open_store
from upgrader.providers.base import ProviderContext
from upgrader.providers.builtin_balancer import from_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
FLAGS = """\
[flags.search-v2]
default = "on"
[flags.search-v2.environments.production]
enabled = true
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every local user may enter (pytest's tmp_path is 0700: ``nobody`` could not
    reach any file in it whatever the file's mode, and the test would prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="upgrader-tokens-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the user ``nobody``; skip where that is not possible."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local user (nobody)")
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def system_python() -> str:
    """A Python ``nobody`` may run (this one may live under root's 0700 home)."""
    found = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if found is None:
        pytest.skip("no python3 in /usr/local/bin, /usr/bin or /bin for the user nobody")
    return found


NOBODY_PUT = """\
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], data=b'{"on": true}', method="PUT",
                                 headers={"Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def env_with(state_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(state_home)
    return env


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Balancer:
    """``upgrader balancer serve`` on loopback (free ports), started through the CLI."""

    def __init__(self, directory: Path, *extra: str, env: dict[str, str]) -> None:
        self.ready_file = directory / "ready.json"
        self.log_file = directory / "balancer.log"
        self.ready_file.unlink(missing_ok=True)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "upgrader.cli", "balancer", "serve",
                 "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                 "--ready-file", str(self.ready_file), *extra],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env,
                cwd=ROOT)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise AssertionError("balancer exited: " + self.log_file.read_text())
            assert time.monotonic() < deadline, "balancer did not get ready"
            time.sleep(0.02)
        self.ready = json.loads(self.ready_file.read_text())
        self.admin_url = f"http://127.0.0.1:{self.ready['admin_port']}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def run_refused(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a server that must refuse to start; one that serves anyway is stopped after a
    bounded wait and reported as the failure it is."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the server started instead of refusing: {err}") from None
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


# --------------------------------------------------------------------------------------------
# The balancer


def test_balancer_without_token_file_generates_one_another_user_cannot_use(shared_dir):
    state_home = shared_dir / "state"
    state_home.mkdir(mode=0o755)
    balancer = Balancer(shared_dir, env=env_with(state_home))
    try:
        # the finding: another local user switched maintenance on; now 401, from anyone
        # without the token
        maintenance = balancer.admin_url + "/admin/maintenance"
        put = as_nobody(system_python(), "-I", "-c", NOBODY_PUT, maintenance)
        assert put.stdout.strip() == "401", put.stderr
        assert http("PUT", maintenance, {"on": True})[0] == 401

        # generated, private, and where the log line and the ready file say
        token_file = state_home / "upgrader" / "tokens" / \
            f"balancer-{balancer.ready['admin_port']}.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        assert balancer.ready["token_file"] == str(token_file)
        assert f"the admin token is in {token_file} (mode 0600)" in \
            balancer.log_file.read_text()
        token = token_file.read_text().strip()
        assert len(token) >= 40
        # another local user cannot read it; a wrong token is refused
        peek = as_nobody("cat", str(token_file))
        assert peek.returncode != 0 and "Permission denied" in peek.stderr
        assert http("PUT", maintenance, {"on": True},
                    {"Authorization": "Bearer " + token[:-1]})[0] == 401
        status, state = http("GET", balancer.admin_url + "/admin/state",
                             headers={"Authorization": "Bearer " + token})
        assert status == 200 and state["maintenance"] is False
    finally:
        balancer.stop()


def test_balancer_reuses_its_generated_token_and_replaces_a_loosened_one(shared_dir):
    state_home = shared_dir / "state"
    env = env_with(state_home)
    first = Balancer(shared_dir, env=env)
    port = first.ready["admin_port"]
    first.stop()
    token_file = Path(first.ready["token_file"])
    token = token_file.read_text().strip()
    # a restart on the same port keeps the token its clients hold
    again = Balancer(shared_dir, "--admin", f"127.0.0.1:{port}", env=env)
    try:
        assert token_file.read_text().strip() == token
    finally:
        again.stop()
    # upgrader made that file: once others may read it, it is replaced (a fresh token, 0600)
    token_file.chmod(0o644)
    third = Balancer(shared_dir, "--admin", f"127.0.0.1:{port}", env=env)
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        fresh = token_file.read_text().strip()
        assert fresh != token
        assert http("GET", third.admin_url + "/admin/state",
                    headers={"Authorization": "Bearer " + token})[0] == 401
        assert http("GET", third.admin_url + "/admin/state",
                    headers={"Authorization": "Bearer " + fresh})[0] == 200
    finally:
        third.stop()


def test_balancer_refuses_a_token_file_others_can_read(shared_dir):
    token_file = shared_dir / "admin.token"
    token_file.write_text("s3cret-admin-token\n")
    token_file.chmod(0o644)
    # the danger: any local user reads a 0644 token
    assert as_nobody("cat", str(token_file)).stdout.strip() == "s3cret-admin-token"
    result = run_refused(
        [sys.executable, "-m", "upgrader.cli", "balancer", "serve", "--listen", "127.0.0.1:0",
         "--admin", "127.0.0.1:0", "--token-file", str(token_file),
         "--ready-file", str(shared_dir / "ready.json")], env_with(shared_dir / "state"))
    assert result.returncode == 2
    assert (f"upgrader balancer: {token_file}: --token-file: the token file has mode 0644: "
            f"group or others may read it; refusing to use it (fix: chmod 600 {token_file})"
            ) in result.stderr
    assert "s3cret" not in result.stderr
    assert not (shared_dir / "ready.json").exists()
    # group-readable is refused too; 0600 (root reads it all the same) is fine
    token_file.chmod(0o640)
    assert run_refused(
        [sys.executable, "-m", "upgrader.cli", "balancer", "serve", "--listen", "127.0.0.1:0",
         "--admin", "127.0.0.1:0", "--token-file", str(token_file)],
        env_with(shared_dir / "state")).returncode == 2
    token_file.chmod(0o600)
    balancer = Balancer(shared_dir, "--token-file", str(token_file),
                        env=env_with(shared_dir / "state"))
    try:
        assert http("GET", balancer.admin_url + "/admin/state",
                    headers={"Authorization": "Bearer s3cret-admin-token"})[0] == 200
        assert not (shared_dir / "state").exists()       # nothing generated
    finally:
        balancer.stop()


def test_balancer_bearer_scheme_is_case_insensitive(shared_dir):
    token_file = shared_dir / "admin.token"
    token_file.write_text("case-t0ken\n")
    token_file.chmod(0o600)
    balancer = Balancer(shared_dir, "--token-file", str(token_file),
                        env=env_with(shared_dir / "state"))
    url = balancer.admin_url + "/admin/state"
    try:
        for header in ("Bearer case-t0ken", "bearer case-t0ken", "BEARER case-t0ken",
                       "bEaReR  case-t0ken", "Bearer\tcase-t0ken"):
            assert http("GET", url, headers={"Authorization": header})[0] == 200, header
        for header in ("Bearer CASE-T0KEN", "Basic case-t0ken", "case-t0ken",
                       "Bearercase-t0ken", "Bearer case-t0ken extra"):
            assert http("GET", url, headers={"Authorization": header})[0] == 401, header
    finally:
        balancer.stop()


def test_the_provider_finds_the_generated_token(shared_dir, monkeypatch):
    state_home = shared_dir / "state"
    balancer = Balancer(shared_dir, env=env_with(state_home))
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    try:
        client = from_settings({"admin_url": balancer.admin_url}, ProviderContext())

        async def use() -> Any:
            async with client:
                return await client.state()

        state = asyncio.run(use())
        assert state.maintenance is False
    finally:
        balancer.stop()


# --------------------------------------------------------------------------------------------
# `upgrader flags serve` (OFREP)


@pytest.fixture
def store_spec(shared_dir: Path) -> str:
    spec = str(shared_dir / "flags.sqlite")
    with open_store(spec) as store:
        store.replace(loads(FLAGS), actor="test", reason="fixture")
    return spec


class FlagsServe:
    def __init__(self, store_spec: str, *extra: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "upgrader.cli", "flags", "serve", "--store", store_spec,
             "--env", "production", "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.lines: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.process.stderr is not None
        while not any("http://" in line for line in self.lines):
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError("flags serve exited: " + "".join(self.lines))
            self.lines.append(line)
            assert time.monotonic() < deadline, "flags serve did not announce its URL"
        url_line = next(line for line in self.lines if "http://" in line)
        self.url = url_line[url_line.index("http://"):].split("/ofrep")[0]

    def evaluate(self, headers: dict[str, str]) -> int:
        return http("POST", self.url + "/ofrep/v1/evaluate/flags/search-v2",
                    {"context": {"targetingKey": "u1"}}, headers)[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        assert self.process.stderr is not None
        self.process.stderr.close()


def test_flags_serve_without_a_token_generates_one(store_spec, shared_dir):
    state_home = shared_dir / "state"
    server = FlagsServe(store_spec, env=env_with(state_home))
    try:
        port = int(server.url.rsplit(":", 1)[1])
        token_file = state_home / "upgrader" / "tokens" / f"ofrep-{port}.token"
        assert f"the token is in {token_file} (mode 0600)" in "".join(server.lines)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert server.evaluate({}) == 401
        assert server.evaluate({"X-API-Key": token}) == 200
        assert server.evaluate({"Authorization": "bearer " + token}) == 200
        assert server.evaluate({"Authorization": "Bearer nope"}) == 401
    finally:
        server.stop()


def test_flags_serve_refuses_a_token_file_others_can_read(store_spec, shared_dir):
    token_file = shared_dir / "ofrep.token"
    token_file.write_text("ofrep-t0ken\n")
    token_file.chmod(0o644)
    result = run_refused(
        [sys.executable, "-m", "upgrader.cli", "flags", "serve", "--store", store_spec,
         "--env", "production", "--listen", "127.0.0.1:0", "--token-file", str(token_file)],
        env_with(shared_dir / "state"))
    assert result.returncode == 2
    assert (f"upgrader flags serve: {token_file}: --token-file: the token file has mode 0644"
            f": group or others may read it; refusing to use it (fix: chmod 600 {token_file})"
            ) in result.stderr
    token_file.chmod(0o600)
    server = FlagsServe(store_spec, "--token-file", str(token_file),
                        env=env_with(shared_dir / "state"))
    try:
        assert server.evaluate({"Authorization": "BEARER ofrep-t0ken"}) == 200
        assert server.evaluate({}) == 401
    finally:
        server.stop()
