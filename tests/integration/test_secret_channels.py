"""Secret host vars never leave the process, on any output channel (issue 13).

A fleet keeps two secrets in ``[defaults] vars`` (``api_token``, ``db_password``) and uses
them as placeholders of its install command; web-02's install fails and prints both (as a
careless deploy script does), so they reach the failure message, the rendered command line,
the state reason, the roll-back and the summary. Every channel is searched for the values:
stdout (``--json`` events), stderr (logs, errors, summary), the SQLite journal, the detached
controller's log, and the payloads a real ``webhook`` notifier POSTs to a local HTTP server.

Run as a script (``python tests/integration/test_secret_channels.py``) it prints the hits per
channel, which is how the closing note of issue 13 measured "before" on the base commit.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120
API_TOKEN = "tkn-Hq83Lz0pQw"
DB_PASSWORD = "pw-Vb72Nc1xRk"
SECRETS = (API_TOKEN, DB_PASSWORD)
#: the reference forms of issue 13: an environment variable, a file, an explicit marker; the
#: names say nothing secret, so only the reference makes them secret
ENV_SECRET = "env-Rk5mW2qZt8"
FILE_SECRET = "file-Jd4nP7sLx3"
MARKED_SECRET = "mark-Ty6bH1vCe9"

INSTALL = ('["sh", "-c", \'echo "deploy $4 with $1 / $2"; if [ "$3" = web-02 ]; then '
           'echo "auth failed: token $1 password $2" >&2; exit 1; fi\', "install", '
           '"{api_token}", "{db_password}", "{host}", "{release}"]')


def fleet_text(webhook_url: str, vars_line: str, install: str = INSTALL) -> str:
    hosts = "".join(f'[[hosts]]\nname = "web-0{i}"\nport = {9300 + i}\n\n' for i in (1, 2, 3))
    return f"""\
[fleet]
name = "secretive"

[release]
current = "1.0.0"
target = "2.0.0"

[commands]
install = {install}
start = ["true"]
stop = ["true"]

[transport]
kind = "local"

[balancer]
kind = "noop"

[health]
kind = "noop"

[[notifiers]]
kind = "webhook"
url = "{webhook_url}"
flush_timeout = 20.0

[verify]
interval = "100ms"
for = "0s"
no_data = "pass"

[strategy]
kind = "rolling"
verify = false
on_failure = "rollback"

[defaults]
{vars_line}

{hosts}"""


DEFAULT_VARS = f'vars = {{ api_token = "{API_TOKEN}", db_password = "{DB_PASSWORD}" }}'


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length).decode("utf-8", "replace"))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def webhook_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback (an OS-chosen port) that keeps every body POSTed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    result = dict(os.environ)
    for name in ("UPGRADER_STATE_DIR", "UPGRADER_STATE"):
        result.pop(name, None)
    result.update(extra or {})
    return result


def cli(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upgrader.cli", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                          env=env(extra_env), cwd=ROOT)


def journal_text(state: Path) -> str:
    with sqlite3.connect(state / "journal.sqlite") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [json.dumps(row, default=str) for table in tables
                for row in conn.execute(f'SELECT * FROM "{table}"').fetchall()]
    return "\n".join(rows)


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError(f"controller {pid} still running after {TIMEOUT} s")


def wait_for_bodies(bodies: list[str], text: str) -> None:
    """The webhook flushes on close; poll (with a deadline) until the summary has arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(text in body for body in bodies):
        time.sleep(0.05)


def collect(tmp: Path, vars_line: str = DEFAULT_VARS, install: str = INSTALL,
            extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Run the fleet headless (``--json``) and detached; the text of every output channel."""
    channels: dict[str, str] = {}
    with webhook_server() as (url, bodies):
        fleet = tmp / "fleet.toml"
        fleet.write_text(fleet_text(url, vars_line, install))
        state = tmp / "state-headless"
        run = cli("run", str(fleet), "--headless", "--json", "--state-dir", str(state),
                  extra_env=extra_env)
        assert run.returncode == 1, run.stdout + run.stderr   # web-02 fails: rolled back
        wait_for_bodies(bodies, "rollout_finished")
        channels["stdout (--json events)"] = run.stdout
        channels["stderr (logs, errors, summary)"] = run.stderr
        channels["journal (SQLite, every table)"] = journal_text(state)
        channels["webhook payloads (headless)"] = "\n".join(bodies)
        headless_bodies = len(bodies)

        detached_state = tmp / "state-detached"
        started = cli("run", str(fleet), "--detach", "--state-dir", str(detached_state),
                      extra_env=extra_env)
        # 0 also when the controller already ended (this rollout is quick) before the CLI
        # reached its control API; either way its log and journal are there to search
        assert started.returncode == 0, started.stderr
        pid = int(re.search(r"pid (\d+)", started.stderr).group(1))
        wait_until_gone(pid)
        wait_for_bodies(bodies[headless_bodies:], "rollout_finished")
        channels["detached: run's own stdout+stderr"] = started.stdout + started.stderr
        channels["detached controller log"] = \
            (detached_state / "secretive.controller.log").read_text(errors="replace")
        channels["journal (detached controller)"] = journal_text(detached_state)
        channels["webhook payloads (detached)"] = "\n".join(bodies[headless_bodies:])
        status = cli("status", str(fleet), "--state-dir", str(detached_state),
                     extra_env=extra_env)
        channels["upgrader status"] = status.stdout + status.stderr
    return channels


def hits(channels: dict[str, str], secrets: tuple[str, ...] = SECRETS) -> dict[str, int]:
    return {where: sum(text.count(secret) for secret in secrets)
            for where, text in channels.items()}


def test_secret_vars_reach_no_output_channel(tmp_path):
    """Secret-named vars ([defaults] vars api_token, db_password) in a failing install: 0 hits
    on every channel (base commit: 20 on stdout, 14 on stderr, 16 in the journal, ...). The
    masked failure does arrive everywhere, so the search is not vacuous."""
    channels = collect(tmp_path)
    assert hits(channels) == dict.fromkeys(channels, 0)
    failure = "auth failed: token *** password ***"
    for where in ("stdout (--json events)", "journal (SQLite, every table)",
                  "webhook payloads (headless)", "detached controller log",
                  "webhook payloads (detached)"):
        assert failure in channels[where], where
    # the rendered command line is there too, with the placeholders' values masked
    assert '"***", "***", "web-02", "2.0.0"' in channels["stdout (--json events)"] or \
        "*** *** web-02 2.0.0" in channels["stdout (--json events)"]


def test_referenced_secrets_reach_no_output_channel(tmp_path):
    """Vars whose names say nothing secret, made secret by a reference: ``{ env = "NAME" }``,
    ``{ file = "PATH" }`` and ``{ value = "...", secret = true }``. The values reach the
    command (the install sees them) but no output channel."""
    secret_file = tmp_path / "db.secret"
    secret_file.write_text(FILE_SECRET + "\n")
    secret_file.chmod(0o600)
    vars_line = (f'vars = {{ api_token = {{ env = "UPG_TEST_DEPLOY_CRED" }}, '
                 f'db_password = {{ file = "{secret_file}" }}, '
                 f'note = {{ value = "{MARKED_SECRET}", secret = true }} }}')
    install = ('["sh", "-c", \'echo "$1 $2 $5" >> "$6"; if [ "$3" = web-02 ]; then '
               'echo "auth failed: token $1 password $2 note $5" >&2; exit 1; fi\', '
               '"install", "{api_token}", "{db_password}", "{host}", "{release}", "{note}", '
               f'"{tmp_path / "seen.log"}"]')
    # rename the vars so that no name is secret-named: only the references make them secret
    vars_line = vars_line.replace("api_token", "deploy_cred").replace("db_password", "db_cred")
    install = install.replace("{api_token}", "{deploy_cred}").replace("{db_password}",
                                                                        "{db_cred}")
    secrets = (ENV_SECRET, FILE_SECRET, MARKED_SECRET)
    channels = collect(tmp_path, vars_line, install, {"UPG_TEST_DEPLOY_CRED": ENV_SECRET})
    assert hits(channels, secrets) == dict.fromkeys(channels, 0)
    assert "auth failed: token *** password *** note ***" in channels["stdout (--json events)"]
    # the command itself got the real values
    assert f"{ENV_SECRET} {FILE_SECRET} {MARKED_SECRET}" in (tmp_path / "seen.log").read_text()


if __name__ == "__main__":        # measure: hits per channel on this checkout
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        counted = hits(collect(Path(tmp)))
    width = max(map(len, counted))
    for where, count in counted.items():
        print(f"{where:<{width}}  {count}")
    print(f"{'total':<{width}}  {sum(counted.values())}")


def test_the_library_result_masks_secrets_too(tmp_path):
    """A program that embeds the engine reads ``RolloutResult.error`` and logs it: the same
    failure text as the events, so the same masking (it carried web-02's echoed token)."""
    import asyncio

    from upgrader import Rollout, loads_fleet

    with webhook_server() as (url, _bodies):
        fleet = loads_fleet(fleet_text(url, DEFAULT_VARS), source=tmp_path / "fleet.toml",
                            base_dir=tmp_path)

        async def main():
            async with Rollout(fleet, state_dir=tmp_path / "state") as rollout:
                return await rollout.run()

        result = asyncio.run(main())
    assert result.exit_code == 1 and result.error, result
    assert "auth failed" in result.error or "web-02" in result.error, result.error
    text = repr(result)
    for secret in SECRETS:
        assert secret not in text, (secret, text)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_check_masks_a_secret_in_a_hosts_failing_current_command(tmp_path: Path,
                                                                 as_json: bool) -> None:
    """``upgrader check`` prints each host's reading error (the ``current`` command's
    stderr): a command that echoes a secret var must not put it on the terminal."""
    current = ('current = ["sh", "-c", \'echo "cannot read: token $1" >&2; exit 1\', "x", '
               '"{api_token}"]\n')
    fleet = tmp_path / "fleet.toml"
    text = fleet_text("http://127.0.0.1:9/hook", DEFAULT_VARS).replace(
        "[commands]\n", "[commands]\n" + current, 1)
    fleet.write_text(text, encoding="utf-8")
    out = cli("check", str(fleet), *(["--json"] if as_json else []),
              extra_env={"UPGRADER_STATE_DIR": str(tmp_path / "state")})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cannot read: token" in out.stdout, out.stdout       # the reason is still shown
    for secret in SECRETS:
        assert secret not in out.stdout and secret not in out.stderr, (out.stdout, out.stderr)
    if as_json:
        assert json.loads(out.stdout)["problems"]
