"""Both releases at once on SQLite: a writer PROCESS on the old release's views and one on
the new release's views insert and update rows throughout start -> complete; afterwards no
row is lost or wrong (count and checksum against what each writer reports it wrote)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.schema.loader import loads
from upgrader.schema.sqlite import SQLiteBackend

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

V1 = '''name = "m1"
release = "v1"
[[operations]]
op = "create_table"
table = "users"
columns = [
  { name = "id", type = "integer", primary_key = true },
  { name = "name", type = "text", nullable = false },
  { name = "score", type = "text" },
  { name = "email", type = "text" },
  { name = "legacy", type = "text", default = "'old'" },
]
'''

V2 = '''name = "m2"
release = "v2"
previous = "v1"
batch_size = 200
[[operations]]
op = "change_type"
table = "users"
column = "score"
type = "integer"
up = "CAST(score AS INTEGER)"
down = "CAST(score AS TEXT)"
[[operations]]
op = "rename_column"
table = "users"
column = "email"
to = "contact"
[[operations]]
op = "add_column"
table = "users"
column = { name = "shout", type = "text" }
up = "upper(name)"
[[operations]]
op = "drop_column"
table = "users"
column = "legacy"
down = "'new'"
'''

#: a writer: inserts rows (ids from BASE up) and updates its own earlier rows until the stop
#: file appears; then prints {id: [name, score, contact]} of what it last wrote
WRITER = r'''
import json, os, sys
from upgrader.schema import connect

path, release, base, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
old = release == "v1"
conn = connect(path, release, isolation_level=None, busy_timeout_ms=60000)
wrote = {}
n = 0
while not os.path.exists(stop):
    n += 1
    row_id = base + n
    name, score, contact = f"w{base} r{n}", n * 7, f"{n}@{release}"
    if old:
        conn.execute("INSERT INTO users (id, name, score, email) VALUES (?, ?, ?, ?)",
                     (row_id, name, str(score), contact))
    else:
        conn.execute("INSERT INTO users (id, name, score, contact, shout) VALUES "
                     "(?, ?, ?, ?, upper(?))", (row_id, name, score, contact, name))
    wrote[row_id] = [name, score, contact]
    if n % 3 == 0:
        target = base + n // 2
        score, contact = n * 11, f"moved{n}@{release}"
        if old:
            conn.execute("UPDATE users SET score = ?, email = ? WHERE id = ?",
                         (str(score), contact, target))
        else:
            conn.execute("UPDATE users SET score = ?, contact = ? WHERE id = ?",
                         (score, contact, target))
        wrote[target] = [wrote[target][0], score, contact]
print(json.dumps(wrote))
'''


def _count(path: str, base: int) -> int:
    conn = sqlite3.connect(path, timeout=60)
    try:
        return conn.execute("SELECT count(*) FROM users WHERE id > ? AND id < ?",
                            (base, base + 1_000_000)).fetchone()[0]
    finally:
        conn.close()


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _checksum(rows) -> str:
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()


def test_old_and_new_release_write_throughout_start_and_complete(tmp_path: Path):
    path = str(tmp_path / "app.sqlite")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.close()
    backend = SQLiteBackend(path)
    backend.start(loads(V1))
    backend.complete("m1")
    from upgrader.schema import connect

    with connect(path, "v1") as conn:
        conn.executemany("INSERT INTO users (id, name, score, email) VALUES (?, ?, ?, ?)",
                         [(i, f"seed {i}", str(i), f"{i}@seed") for i in range(1, 1001)])
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop_old, stop_new = tmp_path / "stop-old", tmp_path / "stop-new"
    old = subprocess.Popen([sys.executable, str(script), path, "v1", "1000000",
                            str(stop_old)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    new = None
    try:
        _wait_for(lambda: _count(path, 1_000_000) >= 20, "the old writer's first rows")
        backend.start(loads(V2))
        at_start = _count(path, 1_000_000)
        new = subprocess.Popen([sys.executable, str(script), path, "v2", "2000000",
                                str(stop_new)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _count(path, 1_000_000) >= at_start + 50
                  and _count(path, 2_000_000) >= 50, "both writers writing after start")
        # the last old host goes away before complete (the engine's order)
        stop_old.touch()
        old_out, old_err = old.communicate(timeout=60)
        assert old.returncode == 0, old_err
        backend.complete("m2")
        at_complete = _count(path, 2_000_000)
        _wait_for(lambda: _count(path, 2_000_000) >= at_complete + 30,
                  "the new writer writing after complete")
        stop_new.touch()
        new_out, new_err = new.communicate(timeout=60)
        assert new.returncode == 0, new_err
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        backend.close()

    expected = {int(k): v for k, v in json.loads(old_out).items()}
    expected.update({int(k): v for k, v in json.loads(new_out).items()})
    expected.update({i: [f"seed {i}", i, f"{i}@seed"] for i in range(1, 1001)})
    with connect(path, "v2") as conn:
        rows = conn.execute("SELECT id, name, score, contact, shout FROM users").fetchall()
    assert len(rows) == len(expected)
    assert _checksum([[r[0], r[1], r[2], r[3]] for r in rows]) == \
        _checksum([[k, *v] for k, v in expected.items()])
    assert all(r[4] == r[1].upper() for r in rows)          # backfilled and kept in step
    raw = sqlite3.connect(path)
    assert "_upg_new" not in raw.execute("SELECT sql FROM sqlite_master WHERE "
                                         "name = 'users'").fetchone()[0]
    assert raw.execute("SELECT typeof(score) FROM users GROUP BY 1").fetchall() == \
        [("integer",)]
    raw.close()
