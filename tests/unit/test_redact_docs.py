"""The docs of issue 13 stay honest: every test the table of docs/SECURITY.md names exists, and
the secret vars example of docs/FLEET.md loads and marks the vars it says are secret."""

from __future__ import annotations

import re
from pathlib import Path

from upgrader.config import loads_fleet

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_security_table_names_exists():
    doc = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    table = doc[doc.index("## What is protected"):doc.index("## Threat model")]
    named = 0
    for row in (line for line in table.splitlines()[4:] if line.startswith("| ")):
        test_cell = row.rsplit("|", 2)[-2]
        if test_cell.strip().startswith("see "):    # another part's file, named only
            continue
        current = None
        for ref in re.findall(r"`([^`]+)`", test_cell):
            path, _, name = ref.partition("::")
            if path:
                current = ROOT / path
                assert current.is_file(), f"{ref}: no such file"
            assert current is not None, ref
            if name:
                assert re.search(rf"^def {re.escape(name)}\(", current.read_text(),
                                 re.MULTILINE), f"{ref}: no such test in {current.name}"
            named += 1
    assert named >= 15


def test_the_fleet_doc_secret_vars_example_loads(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "FLEET.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Secret vars"):]
    example = section[section.index("```toml\n") + 8:section.index("```\n", 8)]
    monkeypatch.setenv("DEPLOY_CRED", "env-cred-123")
    monkeypatch.setenv("CHANNEL", "stable")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db.txt").write_text("db-cred-456\n")
    text = ('[fleet]\nname = "shop"\n[release]\ncurrent = "1"\ntarget = "2"\n'
            '[commands]\ninstall = ["deploy", "{deploy_cred}"]\nstart = ["true"]\n'
            'stop = ["true"]\n[balancer]\nkind = "noop"\n[health]\nkind = "noop"\n'
            '[strategy]\nkind = "rolling"\n[[hosts]]\nname = "web-01"\n' + example)
    host = loads_fleet(text, source=tmp_path / "fleet.toml", base_dir=tmp_path).hosts[0]
    assert host.vars["deploy_cred"] == "env-cred-123"
    assert host.vars["db_cred"] == "db-cred-456"
    assert host.vars["channel"] == "stable"
    assert host.secret_vars == {"api_token", "deploy_cred", "db_cred", "license"}
