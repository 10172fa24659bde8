"""Both releases at once on PostgreSQL: a writer PROCESS on the old release's views and one on
the new release's views insert and update rows throughout start -> backfill -> complete;
afterwards no row is lost or wrong (count and checksum against what each writer reports)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from upgrader.schema.model import AddColumn, ChangeType, Column, DropColumn, Migration, RenameColumn

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEEDED = 20_000

# One writer. Each loop: insert a row of its own, update one of its own rows, update one of
# the seeded rows it owns (even ids: old writer, odd ids: new writer; the new writer also
# updates some columns only of a seeded row). It prints its progress
# every 10 operations and, when the stop file appears, the final state of every row it wrote.
WRITER = textwrap.dedent("""
    import json, os, random, sys
    from decimal import Decimal
    import psycopg

    url, role, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    seeded = int(sys.argv[4])
    rng = random.Random(role)
    conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    mine = {}       # id -> row as this writer last wrote it
    ops = 0
    while not os.path.exists(stop):
        n = ops
        if role == "old":          # release v1: owner, price in cents, legacy
            owner, cents = f"old-{n}", rng.randrange(10**7)
            (rid,) = conn.execute(
                "INSERT INTO accounts (owner, price, legacy) VALUES (%s, %s, %s) RETURNING id",
                (owner, cents, f"L{n}")).fetchone()
            mine[rid] = {"owner": owner, "cents": cents, "legacy": f"L{n}"}
            rid = rng.choice(list(mine))
            owner, cents = f"old-{n}-u", rng.randrange(10**7)
            conn.execute("UPDATE accounts SET owner = %s, price = %s WHERE id = %s",
                         (owner, cents, rid))
            mine[rid].update(owner=owner, cents=cents)
            rid = rng.randrange(1, seeded // 2) * 2
            owner, cents = f"old-{n}-s", rng.randrange(10**7)
            conn.execute("UPDATE accounts SET owner = %s, price = %s, legacy = %s "
                         "WHERE id = %s", (owner, cents, f"S{n}", rid))
            mine[rid] = {"owner": owner, "cents": cents, "legacy": f"S{n}"}
        else:                      # release v2: owner_name, price numeric, owner_upper
            owner, cents = f"new-{n}", rng.randrange(10**7)
            (rid,) = conn.execute(
                "INSERT INTO accounts (owner_name, price, owner_upper) VALUES (%s, %s, %s) "
                "RETURNING id", (owner, Decimal(cents) / 100, owner.upper())).fetchone()
            mine[rid] = {"owner": owner, "cents": cents, "legacy": "v2"}
            rid = rng.choice(list(mine))
            owner, cents = f"new-{n}-u", rng.randrange(10**7)
            conn.execute("UPDATE accounts SET owner_name = %s, price = %s, owner_upper = %s "
                         "WHERE id = %s", (owner, Decimal(cents) / 100, owner.upper(), rid))
            mine[rid].update(owner=owner, cents=cents)
            rid = rng.randrange(0, seeded // 2) * 2 + 1
            owner, cents = f"new-{n}-s", rng.randrange(10**7)
            conn.execute("UPDATE accounts SET owner_name = %s, price = %s, owner_upper = %s "
                         "WHERE id = %s", (owner, Decimal(cents) / 100, owner.upper(), rid))
            mine[rid] = {"owner": owner, "cents": cents, "legacy": mine.get(rid, {}).get(
                "legacy", f"s{rid}")}
            # a partial update of a seeded row the backfill may not have reached yet: the
            # columns it leaves alone must come from the old ones, not from NULL
            rid = rng.randrange(0, seeded // 2) * 2 + 1
            row = mine.setdefault(rid, {"owner": f"seed-{rid}",
                                        "cents": (rid * 7919) % 10000000, "legacy": f"s{rid}"})
            if n % 2:
                row["cents"] = rng.randrange(10**7)
                conn.execute("UPDATE accounts SET price = %s WHERE id = %s",
                             (Decimal(row["cents"]) / 100, rid))
            else:
                row["owner"] = f"new-{n}-p"
                conn.execute("UPDATE accounts SET owner_name = %s, owner_upper = %s "
                             "WHERE id = %s", (row["owner"], row["owner"].upper(), rid))
        ops += 1
        if ops % 10 == 0:
            print(f"progress {ops}", flush=True)
    print(json.dumps({"ops": ops, "rows": mine}), flush=True)
""")


class Writer:
    def __init__(self, url: str, role: str, tmp: Path) -> None:
        self.stop_file = tmp / f"stop-{role}"
        self.ops = 0
        self.result: dict | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, role, str(self.stop_file), str(SEEDED)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("progress "):
                self.ops = int(line.split()[1])
            elif line.startswith("{"):
                self.result = json.loads(line)

    def wait_ops(self, at_least: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ops < at_least:
            if self.process.poll() is not None:
                raise AssertionError(f"writer died: {self.process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"writer stuck at {self.ops} < {at_least} operations")
            time.sleep(0.01)

    def stop(self) -> dict:
        self.stop_file.touch()
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self.reader.join(timeout=10)
        assert self.process.returncode == 0, self.process.stderr.read()
        assert self.result is not None
        return self.result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_old_and_new_release_write_through_start_backfill_complete(postgres_url, tmp_path):
    import psycopg

    from upgrader.schema.postgres import PostgresBackend, release_url

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, "
                     "price integer NOT NULL, legacy text)")
        conn.execute("INSERT INTO accounts (owner, price, legacy) SELECT 'seed-' || g, "
                     "(g * 7919) %% 10000000, 's' || g FROM generate_series(1, %s) g",
                     (SEEDED,))
    m = Migration(
        name="accounts-v2", release="v2", previous="v1", batch_size=200,
        operations=(
            ChangeType("accounts", "price", "numeric(12,2)",
                       up="(price / 100.0)::numeric(12,2)", down="(price * 100)::integer"),
            RenameColumn("accounts", "owner", "owner_name"),
            AddColumn("accounts", Column("owner_upper", "text"), up="upper(owner)"),
            DropColumn("accounts", "legacy", down="'v2'"),
        ))
    # the old release runs before the migration exists: its search_path lists its views'
    # schema first (created by start) and falls back to the tables until then
    old = Writer(release_url(postgres_url, "upg_v1,public"), "old", tmp_path)
    new = None
    try:
        old.wait_ops(30)
        with PostgresBackend(postgres_url) as db:
            db.start(m, backfill=False)
            v2 = {r.release: r for r in db.status().live}["v2"]
            new = Writer(v2.url, "new", tmp_path)
            new.wait_ops(30)
            # backfill a few batches at a time; both writers must get work in between
            steps = 0
            while True:
                marks = (old.ops, new.ops)
                result = db.backfill(m.name, max_batches=5)
                steps += 1
                if result.done:
                    break
                old.wait_ops(marks[0] + 10)
                new.wait_ops(marks[1] + 10)
            assert steps >= 15                       # 20,000 rows / (5 x 200)
            # rows the writers rewrote before the backfill reached them needed none (how
            # many depends on the writers' speed: 699 in one CI run, so no tight bound)
            done, total = db.status().backfill["accounts"]
            assert done == total and SEEDED // 2 < total <= SEEDED
            old_result = old.stop()                  # the last old host is gone
            with psycopg.connect(postgres_url) as conn:
                legacy = dict(conn.execute("SELECT id, legacy FROM accounts").fetchall())
            mark = new.ops
            db.complete(m.name)                      # while the new writer keeps writing
            assert [r.release for r in db.status().live] == ["v2"]
            new.wait_ops(mark + 50)
        new_result = new.stop()
    finally:
        old.kill()
        if new is not None:
            new.kill()

    # what the table must hold: the seed, then each writer's own last writes
    expected = {i: {"owner": f"seed-{i}", "cents": (i * 7919) % 10_000_000,
                    "legacy": f"s{i}"} for i in range(1, SEEDED + 1)}
    for result in (old_result, new_result):
        for rid, row in result["rows"].items():
            expected[int(rid)] = row
    assert old_result["ops"] > 100 and new_result["ops"] > 100
    assert not set(map(int, old_result["rows"])) & set(map(int, new_result["rows"]))
    for rid, row in expected.items():          # the dropped column, as v1 saw it last
        assert legacy.get(rid, "v2") == row["legacy"], rid

    def line(rid: int, owner: str, price: Decimal, upper: str) -> str:
        return f"{rid}|{owner}|{price}|{upper}"

    cents = Decimal("0.01")
    want = [line(rid, row["owner"], (Decimal(row["cents"]) / 100).quantize(cents),
                 row["owner"].upper()) for rid, row in sorted(expected.items())]
    with psycopg.connect(postgres_url) as conn:
        got = conn.execute("SELECT id, owner_name, price, owner_upper FROM accounts "
                           "ORDER BY id").fetchall()
        columns = [c.name for c in conn.execute("SELECT * FROM accounts LIMIT 0").description]
    assert columns == ["id", "owner_name", "price", "owner_upper"]
    have = [line(rid, owner, price, upper) for rid, owner, price, upper in got]
    assert len(have) == len(want)                                  # no row lost or extra
    wrong = [(w, h) for w, h in zip(want, have) if w != h]
    assert wrong == []
    def digest(lines: list) -> str:
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    assert digest(have) == digest(want)
