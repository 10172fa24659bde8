"""Which sample fleets fit which lab, and what a misfit says (no processes: the real labs
are in tests/integration/test_lab_fit.py). Before issue 12 there was no such choice: `lab up`
printed canary.toml for every lab, the SSH lab's sample pinned the default subnet."""

from __future__ import annotations

from pathlib import Path

from upgrader.lab.fleet_table import fitting_samples, misfits, next_command, sample_requirements
from upgrader.lab.layout import LabLayout
from upgrader.lab.sshlab import SshLabLayout

SAMPLES = Path(__file__).resolve().parents[2] / "sample_fleets"


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_the_default_lab_runs_the_canary_first(tmp_path):
    lab = LabLayout(dir=tmp_path, hosts=8)
    fits = names(fitting_samples(lab, directory=SAMPLES))
    assert fits[0] == "canary.toml"
    assert {"rolling.toml", "phased.toml", "takedown.toml"} <= set(fits)
    # slots, new hosts, a database, a flag store, SSH: not this lab
    assert not {"bluegreen.toml", "shedding.toml", "schema.toml", "feature.toml",
                "ssh-lab.toml"} & set(fits)


def test_each_kind_of_lab_gets_its_sample(tmp_path):
    assert names(fitting_samples(LabLayout(dir=tmp_path, hosts=8, slots=True),
                                 directory=SAMPLES)) == ["bluegreen.toml"]
    assert names(fitting_samples(LabLayout(dir=tmp_path, hosts=8, new_hosts=8),
                                 directory=SAMPLES))[0] == "canary.toml"
    assert "shedding.toml" in names(fitting_samples(
        LabLayout(dir=tmp_path, hosts=8, new_hosts=8), directory=SAMPLES))
    assert names(fitting_samples(LabLayout(dir=tmp_path, hosts=4), database=True,
                                 directory=SAMPLES)) == ["schema.toml"]
    ssh = SshLabLayout(dir=tmp_path, hosts=4, base_port=21000, subnet="10.232.7.0/24")
    assert names(fitting_samples(ssh, directory=SAMPLES)) == ["ssh-lab.toml"]


def test_a_4_host_local_lab_has_no_sample_and_says_what_they_need(tmp_path):
    lab = LabLayout(dir=tmp_path, hosts=4)
    assert fitting_samples(lab, directory=SAMPLES) == []
    assert next_command(lab) is None
    needs = sample_requirements(SAMPLES)
    assert "canary.toml: 8 hosts" in needs
    assert "ssh-lab.toml: SSH, 4 hosts" in needs


def test_misfits_name_both_sides(tmp_path):
    lab = LabLayout(dir=tmp_path, hosts=4, base_port=19000)
    fleet = LabLayout(dir=tmp_path, hosts=8, base_port=19500, slots=True)
    problems = misfits(fleet, lab)
    assert "the fleet needs 8 hosts; the running lab has 4" in problems
    assert any("pins base_port = 19500; the running lab uses 19000" in p for p in problems)
    assert any("two slots per host" in p for p in problems)
    assert misfits(LabLayout(dir=tmp_path, hosts=2, base_port=19000), lab) == []
    ssh = SshLabLayout(dir=tmp_path, hosts=4, base_port=19000)
    assert any("for an SSH lab; the running lab is a local lab" in p
               for p in misfits(ssh, lab))


def test_up_command_and_description(tmp_path, monkeypatch):
    monkeypatch.setenv("UPGRADER_LAB_DIR", str(tmp_path))
    lab = LabLayout(dir=tmp_path, hosts=4, base_port=19000)
    assert lab.up_command() == "upgrader lab up --hosts 4 --base-port 19000"
    assert "hosts 19101-19104" in lab.describe()
    elsewhere = LabLayout(dir=tmp_path / "x")
    assert elsewhere.up_command() == f"upgrader lab up --dir {tmp_path / 'x'}"
    assert next_command(elsewhere) == (f"UPGRADER_LAB_DIR={tmp_path / 'x'} upgrader run "
                                       f"{SAMPLES / 'canary.toml'} --headless"
                                       if not str(SAMPLES).startswith(str(Path.cwd())) else
                                       f"UPGRADER_LAB_DIR={tmp_path / 'x'} upgrader run "
                                       "sample_fleets/canary.toml --headless")
    ssh = SshLabLayout(dir=tmp_path, hosts=4, subnet="10.232.7.0/24")
    assert ssh.up_command() == "upgrader lab up --ssh --hosts 4 --subnet 10.232.7.0/24"


def test_the_promql_sample_needs_a_lab_with_prometheus_and_comes_first_there(tmp_path):
    """sample_fleets/prometheus.toml reads the lab's Prometheus: offered only to a lab
    started with --prometheus, and first there (its reason to exist)."""
    assert "prometheus.toml" not in names(fitting_samples(LabLayout(dir=tmp_path, hosts=8),
                                                          directory=SAMPLES))
    assert fitting_samples(LabLayout(dir=tmp_path, hosts=3), directory=SAMPLES) == []
    with_prometheus = names(fitting_samples(LabLayout(dir=tmp_path, hosts=8),
                                            directory=SAMPLES, prometheus=True))
    assert with_prometheus[0] == "prometheus.toml" and "canary.toml" in with_prometheus
    assert names(fitting_samples(LabLayout(dir=tmp_path, hosts=3), directory=SAMPLES,
                                 prometheus=True)) == ["prometheus.toml"]
    assert next_command(LabLayout(dir=tmp_path, hosts=3), prometheus=True).endswith(
        "prometheus.toml --headless")
    assert "prometheus.toml: 3 hosts, Prometheus (lab up --prometheus)" in \
        sample_requirements(SAMPLES)


def test_the_lab_docs_worked_example_is_the_promql_sample(tmp_path):
    """docs/LAB.md's worked example shows the [verify] of sample_fleets/prometheus.toml as
    it is (the integration test runs that file)."""
    import tomllib

    doc = (SAMPLES.parent / "docs" / "LAB.md").read_text(encoding="utf-8")
    section = doc[doc.index("### A worked example: a canary judged by PromQL"):]
    start = section.index("```toml\n") + len("```toml\n")
    shown = tomllib.loads(section[start:section.index("```", start)])
    sample = tomllib.loads((SAMPLES / "prometheus.toml").read_text(encoding="utf-8"))
    assert shown["verify"] == sample["verify"]
