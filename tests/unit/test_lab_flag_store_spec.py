"""Which flag store a lab app reads (upgrader.lab.app.lab_flag_store): what ``lab up
--flag-store`` recorded in ``<lab dir>/flags.store``, else ``<lab dir>/flags.sqlite``; a SQLite
store that does not exist yet means no flags (the app serves as if every flag were off)."""

from __future__ import annotations

from pathlib import Path

from upgrader.lab.app import lab_flag_store
from upgrader.lab.layout import LAB_FLAG_STORE, LAB_FLAG_STORE_SPEC, LabLayout


def root_of(lab_dir: Path) -> Path:
    return LabLayout(dir=lab_dir).host_root("web-01")


def test_without_a_recorded_spec_the_app_reads_the_labs_sqlite_file_once_it_exists(
        tmp_path: Path) -> None:
    root = root_of(tmp_path)
    assert lab_flag_store(root) is None
    (tmp_path / LAB_FLAG_STORE).write_bytes(b"")
    assert lab_flag_store(root) == str(tmp_path / LAB_FLAG_STORE)


def test_the_recorded_spec_wins(tmp_path: Path) -> None:
    root = root_of(tmp_path)
    (tmp_path / LAB_FLAG_STORE).write_bytes(b"")          # the default, not used
    url = "postgresql://app:pw@127.0.0.1:5432/flags"
    (tmp_path / LAB_FLAG_STORE_SPEC).write_text(url + "\n", encoding="utf-8")
    assert lab_flag_store(root) == url
    other = tmp_path / "elsewhere.sqlite"
    (tmp_path / LAB_FLAG_STORE_SPEC).write_text(str(other) + "\n", encoding="utf-8")
    assert lab_flag_store(root) is None                   # not there yet
    other.write_bytes(b"")
    assert lab_flag_store(root) == str(other)
    assert LabLayout(dir=tmp_path).flag_store_file == tmp_path / LAB_FLAG_STORE_SPEC
