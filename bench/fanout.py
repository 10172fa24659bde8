"""SSH fan-out: upgrader's ssh transport against ansible-core, parallel-ssh, fabric and
plain OpenSSH, side by side in one run, on N loopback sshd hosts (40 by default).

Two scenarios, each a fresh start (new connections, new control sockets):

* ``a``  one command (``echo ok``) on every host;
* ``b``  a five-command upgrade procedure on every host (``step drain``, ``stop``,
  ``install``, ``start``, ``check``; ``step`` is a three-line sh script that echoes its
  argument), where connection reuse and per-command overhead decide.

Tools (every one except parallel-ssh verifies host keys against the lab's known_hosts):

* ``upgrader``     the ``ssh`` transport plugin, created exactly as a rollout creates it
                   (``Plugins().create("transport", ProviderSpec("ssh", ...))``); hosts run
                   concurrently, a host's steps one after the other on its one connection;
* ``asyncssh``     asyncssh used bare (``connect`` + ``conn.run``), the floor under upgrader;
* ``openssh``      ``ssh`` processes in parallel, ``KexAlgorithms=curve25519-sha256``; in (b)
                   one ControlMaster per host (``ControlPersist=60s``) and five ``ssh`` calls;
* ``pssh``         parallel-ssh's ``ParallelSSHClient`` (libssh2), one client, one
                   ``run_command`` + ``join`` per step; it does not check host keys at all;
* ``fabric``       a ``ThreadingGroup`` of Connections with paramiko's ``RejectPolicy`` and
                   the lab's known_hosts; one ``group.run`` per step;
* ``ansible-raw``  ``ansible -m raw`` (a) / a five-task playbook of ``raw`` tasks (b);
* ``ansible-cmd``  ``ansible -m command`` (a) / a five-task playbook of ``command`` tasks (b).

ansible runs as shipped: ``-f N``, its default ``ssh_args`` (``-C -o ControlMaster=auto -o
ControlPersist=60s``), pipelining off, interpreter discovery on, ``host_key_checking`` on,
with ``UserKnownHostsFile`` and ``StrictHostKeyChecking=yes`` added through
``ansible_ssh_common_args``. Each trial gets a fresh ``ANSIBLE_SSH_CONTROL_PATH_DIR`` and its
masters are sent ``ssh -O exit`` afterwards. For (b) a playbook is the fair choice: it is how
ansible describes a procedure, and it reuses one process and its control sockets for the five
tasks (five ad-hoc calls would add four interpreter start-ups).

Every trial runs in a fresh Python process (``--worker``): the Python libraries' imports are
not timed, the CLI tools' (ansible, ssh) whole processes are, since that is what a user of
them pays. A trial counts only if every host answered every command correctly. The tools take
turns within each run (the order rotates from run to run), so they see the same load.

The remote shell reads no rc file: the lab sshd sets ``SHLVL=1`` for sessions (``SetEnv``), so
root's bash (the login shell here) believes it is nested and skips ``~/.bashrc`` (which on
this machine runs ``pyenv init``); a preflight check fails the run if ``~/.bashrc`` is read.

    .venv/bin/python bench/fanout.py --hosts 40 --runs 5

Prints a markdown table (medians, and ratios to upgrader); results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

PY = sys.executable
BIN = Path(PY).parent
TOOLS = ("upgrader", "asyncssh", "openssh", "pssh", "fabric", "ansible-raw", "ansible-cmd")
STEPS = ("drain", "stop", "install", "start", "check")
STEP_SCRIPT = "#!/bin/sh\n# one step of the upgrade procedure: prints '<step> ok'\necho \"$1 ok\"\n"
TRIAL_TIMEOUT = 600.0
#: seconds between trials, for sshd to reap the closed connections
SETTLE = 0.5


# --------------------------------------------------------------------------------------------
# the lab: N sshds on 127.0.0.2.., a client key, known_hosts, an ansible inventory


def lab_hosts(lab: Path) -> list[dict]:
    return json.loads((lab / "hosts.json").read_text())


def start_lab(lab: Path, count: int) -> list:
    from upgrader.lab.sshd import Sshd, make_client_key

    client = make_client_key(lab / "client_key")
    servers = []
    try:
        for i in range(count):
            servers.append(Sshd(lab / f"h{i:02d}", address=f"127.0.0.{i + 2}",
                                authorized_keys=[client.public]).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    hosts = [{"name": f"h{i:02d}", "address": s.address, "port": s.port}
             for i, s in enumerate(servers)]
    (lab / "hosts.json").write_text(json.dumps(hosts))
    (lab / "known_hosts").write_text("".join(s.known_hosts_line() + "\n" for s in servers))
    step = lab / "step"
    step.write_text(STEP_SCRIPT)
    step.chmod(0o755)
    key = lab / "client_key"
    common = (f"-F /dev/null -o UserKnownHostsFile={lab / 'known_hosts'} "
              f"-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    lines = ["[lab]"] + [f"{h['name']} ansible_host={h['address']} ansible_port={h['port']}"
                         for h in hosts]
    lines += ["", "[lab:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key}",
              f"ansible_ssh_common_args='{common}'"]
    (lab / "inventory.ini").write_text("\n".join(lines) + "\n")
    (lab / "ansible.cfg").write_text("# empty: ansible's shipped defaults\n")
    for module in ("raw", "command"):
        tasks = "".join(f"    - name: {s}\n      {module}: {lab / 'step'} {s}\n" for s in STEPS)
        (lab / f"procedure_{module}.yml").write_text(
            f"- hosts: lab\n  gather_facts: false\n  tasks:\n{tasks}")
    return servers


def ssh_base(lab: Path, host: dict) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-i", str(lab / "client_key"), "-p", str(host["port"]),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={lab / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "KexAlgorithms=curve25519-sha256", f"root@{host['address']}"]


def preflight(lab: Path) -> str:
    """Prove that the remote login shell skips root's ~/.bashrc (which sets PYENV_ROOT)."""
    host = lab_hosts(lab)[0]
    login_shell = subprocess.run(["getent", "passwd", "root"], capture_output=True,
                                 text=True).stdout.strip().rsplit(":", 1)[-1]
    probe = subprocess.run(ssh_base(lab, host) + ['echo "$0|${SHLVL}|${PYENV_ROOT-unset}"'],
                           capture_output=True, text=True, timeout=30)
    seen = probe.stdout.strip()
    bashrc = Path("~root/.bashrc").expanduser()
    marks = "pyenv" in bashrc.read_text() if bashrc.exists() else False
    if probe.returncode != 0 or not seen.endswith("|unset"):
        raise SystemExit(f"preflight: the remote shell read an rc file ({seen!r}, "
                         f"{probe.stderr.strip()})")
    rc = "runs pyenv init" if marks else "exists"
    return (f"root's login shell {login_shell}; ~/.bashrc {rc}; a command sees "
            f"$0|SHLVL|PYENV_ROOT = {seen} (rc file not read)")


def refusal_check(lab: Path, tools: list[str]) -> str:
    """Show that each tool really checks host keys: with known_hosts giving the first host
    another host's key (a changed key), a tool that checks must fail on that host."""
    known = lab / "known_hosts"
    good = known.read_text()
    lines = good.splitlines()
    first_name, second_key = lines[0].split()[0], lines[1].split(None, 1)[1]
    known.write_text("\n".join([f"{first_name} {second_key}", *lines[1:]]) + "\n")
    try:
        seen = {}
        for tool in tools:
            result = trial(tool, "a", lab)
            seen[tool] = "refused" if result.get("ok", 0) < len(lines) else "ACCEPTED"
    finally:
        known.write_text(good)
    return ", ".join(f"{tool} {verdict}" for tool, verdict in seen.items())


# --------------------------------------------------------------------------------------------
# workers: one trial of one tool in a fresh process; print {"seconds", "cpu", "ok", "error"}


class Stopwatch:
    """Wall time and CPU time (this process and its reaped children: ansible's forks, ssh)
    of the timed section of a trial."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()
        self.seconds = self.cpu_seconds = 0.0

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def stop(self) -> Stopwatch:
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = self._cpu() - self.cpu
        return self


def expected(scenario: str) -> list[str]:
    return ["ok"] if scenario == "a" else [f"{s} ok" for s in STEPS]


def commands(lab: Path, scenario: str) -> list[list[str]]:
    return [["echo", "ok"]] if scenario == "a" else [[str(lab / "step"), s] for s in STEPS]


async def work_upgrader(lab: Path, scenario: str) -> tuple[Stopwatch, int]:
    from upgrader.model import Host, ProviderSpec
    from upgrader.plugins import Plugins
    from upgrader.providers.base import ProviderContext

    hosts = [Host(name=h["name"], address=h["address"], vars={"ssh_port": str(h["port"])})
             for h in lab_hosts(lab)]
    plugins = Plugins()
    settings = {"known_hosts": str(lab / "known_hosts"),
                "identity_files": [str(lab / "client_key")], "agent": False, "config": "",
                "username": "root"}
    plugins.lookup("transport", "ssh")        # load the plugins before the clock starts
    cmds, want = commands(lab, scenario), expected(scenario)

    async def procedure(transport, host) -> bool:
        outs = [(await transport.run(host, argv)).stdout.strip() for argv in cmds]
        return outs == want

    watch = Stopwatch()
    transport = plugins.create("transport", ProviderSpec("ssh", settings), ProviderContext())
    try:
        oks = await asyncio.gather(*(procedure(transport, h) for h in hosts))
        watch.stop()
    finally:
        await transport.aclose()
    assert transport.connections_opened == len(hosts), transport.connections_opened
    return watch, sum(oks)


async def work_asyncssh(lab: Path, scenario: str) -> tuple[Stopwatch, int]:
    import asyncssh

    cmds, want = commands(lab, scenario), expected(scenario)

    async def procedure(host: dict, known, keys) -> bool:
        async with asyncssh.connect(host["address"], port=host["port"], username="root",
                                    known_hosts=known, client_keys=keys, agent_path=None,
                                    config=None) as conn:
            outs = []
            for argv in cmds:
                result = await conn.run(" ".join(argv), check=True)
                outs.append(str(result.stdout).strip())
        return outs == want

    watch = Stopwatch()
    known = asyncssh.read_known_hosts(str(lab / "known_hosts"))
    keys = asyncssh.load_keypairs([str(lab / "client_key")])
    oks = await asyncio.gather(*(procedure(h, known, keys) for h in lab_hosts(lab)))
    return watch.stop(), sum(oks)


def work_openssh(lab: Path, scenario: str) -> tuple[Stopwatch, int]:
    import concurrent.futures

    hosts = lab_hosts(lab)
    cmds, want = commands(lab, scenario), expected(scenario)
    control = Path(tempfile.mkdtemp(prefix="cm-", dir=lab))
    mux = [] if scenario == "a" else ["-o", "ControlMaster=auto", "-o",
                                      f"ControlPath={control}/%C", "-o", "ControlPersist=60s"]

    def procedure(host: dict) -> bool:
        outs = []
        for argv in cmds:
            done = subprocess.run(ssh_base(lab, host)[:-1] + mux + [ssh_base(lab, host)[-1],
                                  " ".join(argv)], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TRIAL_TIMEOUT)
            outs.append(done.stdout.strip() if done.returncode == 0 else done.stderr)
        return outs == want

    watch = Stopwatch()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            oks = list(pool.map(procedure, hosts))
        return watch.stop(), sum(oks)
    finally:
        close_masters(control)


def work_pssh(lab: Path, scenario: str) -> tuple[Stopwatch, int]:
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig

    hosts = lab_hosts(lab)
    cmds, want = commands(lab, scenario), expected(scenario)
    watch = Stopwatch()
    client = ParallelSSHClient(
        [h["address"] for h in hosts], user="root", pkey=str(lab / "client_key"),
        host_config=[HostConfig(port=h["port"], user="root", private_key=str(lab / "client_key"))
                     for h in hosts], pool_size=len(hosts), num_retries=1)
    outs: dict[str, list[str]] = {h["address"]: [] for h in hosts}
    for argv in cmds:
        output = client.run_command(" ".join(argv), stop_on_errors=True)
        client.join(output)
        for host_out in output:
            text = "\n".join(host_out.stdout or ()).strip()
            outs[host_out.host].append(
                text if host_out.exit_code == 0 else f"exit {host_out.exit_code}")
    watch.stop()
    return watch, sum(v == want for v in outs.values())


def work_fabric(lab: Path, scenario: str) -> tuple[Stopwatch, int]:
    from fabric import Config, Connection, ThreadingGroup
    from paramiko import RejectPolicy

    hosts = lab_hosts(lab)
    cmds, want = commands(lab, scenario), expected(scenario)
    watch = Stopwatch()
    config = Config(overrides={"load_ssh_configs": False})
    conns = []
    for h in hosts:
        conn = Connection(h["address"], user="root", port=h["port"], config=config,
                          connect_kwargs={"key_filename": str(lab / "client_key"),
                                          "look_for_keys": False, "allow_agent": False})
        conn.client.set_missing_host_key_policy(RejectPolicy())
        conn.client.load_host_keys(str(lab / "known_hosts"))
        conns.append(conn)
    group = ThreadingGroup.from_connections(conns)
    outs: dict[str, list[str]] = {h["address"]: [] for h in hosts}
    try:
        for argv in cmds:
            results = group.run(" ".join(argv), hide=True, in_stream=False, warn=True)
            for conn, result in results.items():
                outs[conn.host].append(result.stdout.strip() if result.ok else str(result))
        watch.stop()
    finally:
        group.close()
    return watch, sum(v == want for v in outs.values())


def ansible_env(lab: Path, control: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(lab / "ansible.cfg"), ANSIBLE_HOME=str(lab / "ansible_home"),
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(control), ANSIBLE_HOST_KEY_CHECKING="True",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def work_ansible(lab: Path, scenario: str, module: str) -> tuple[Stopwatch, int]:
    hosts = lab_hosts(lab)
    forks = str(len(hosts))
    control = Path(tempfile.mkdtemp(prefix="cp-", dir=lab))
    if scenario == "a":
        argv = [str(BIN / "ansible"), "lab", "-i", str(lab / "inventory.ini"), "-f", forks,
                "-m", module, "-a", "echo ok", "-o"]
    else:
        argv = [str(BIN / "ansible-playbook"), "-i", str(lab / "inventory.ini"), "-f", forks,
                str(lab / f"procedure_{module}.yml")]
    watch = Stopwatch()
    try:
        done = subprocess.run(argv, env=ansible_env(lab, control), cwd=lab, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=TRIAL_TIMEOUT)
        watch.stop()
    finally:
        close_masters(control)
    if scenario == "a":
        ok = sum(1 for line in done.stdout.splitlines()
                 if "| rc=0 |" in line and "(stdout) ok" in line)
    else:
        ok = sum(1 for line in done.stdout.splitlines()
                 if " ok=5 " in line and "unreachable=0" in line and "failed=0" in line)
    if ok < len(hosts):
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return watch, ok


def close_masters(control: Path) -> None:
    """End the ControlPersist masters of a trial (they would linger for 60 s)."""
    for sock in control.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab"],
                       capture_output=True, timeout=30)
    shutil.rmtree(control, ignore_errors=True)


def worker(tool: str, scenario: str, lab: Path) -> None:
    try:
        if tool == "upgrader":
            watch, ok = asyncio.run(work_upgrader(lab, scenario))
        elif tool == "asyncssh":
            watch, ok = asyncio.run(work_asyncssh(lab, scenario))
        elif tool == "openssh":
            watch, ok = work_openssh(lab, scenario)
        elif tool == "pssh":
            watch, ok = work_pssh(lab, scenario)
        elif tool == "fabric":
            watch, ok = work_fabric(lab, scenario)
        elif tool in ("ansible-raw", "ansible-cmd"):
            watch, ok = work_ansible(lab, scenario, "raw" if tool == "ansible-raw" else "command")
        else:
            raise SystemExit(f"unknown tool {tool}")
        print(json.dumps({"seconds": watch.seconds, "cpu": watch.cpu_seconds, "ok": ok}))
    except Exception as exc:
        print(json.dumps({"seconds": None, "ok": 0, "error": f"{type(exc).__name__}: {exc}"}))


def trial(tool: str, scenario: str, lab: Path) -> dict:
    done = subprocess.run([PY, __file__, "--worker", tool, "--scenario", scenario,
                           "--lab", str(lab)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TRIAL_TIMEOUT + 60)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"seconds": None, "ok": 0, "error": done.stderr.strip()[-500:]}
    if result.get("ok", 0) < len(lab_hosts(lab)) and "error" not in result:
        result["error"] = f"only {result['ok']} hosts answered correctly: " + done.stderr[-800:]
    return result


# --------------------------------------------------------------------------------------------
# the run


def server_cpu(servers: list) -> float:
    """CPU seconds of every finished connection of the lab's sshds (sshd's per-connection
    processes and the commands they ran, reaped by the listener: ``cutime + cstime``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for server in servers:
        try:
            fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[13]) + int(fields[14])     # cutime, cstime
        except (OSError, TypeError, IndexError, ValueError):
            pass
    return total / ticks


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def versions() -> str:
    from importlib.metadata import version

    names = {"asyncssh": "asyncssh", "ansible-core": "ansible-core",
             "parallel-ssh": "parallel-ssh", "fabric": "fabric", "paramiko": "paramiko",
             "ssh2-python": "ssh2-python"}
    parts = []
    for label, dist in names.items():
        try:
            parts.append(f"{label} {version(dist)}")
        except Exception:
            parts.append(f"{label} (not installed)")
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return ", ".join(parts) + f"; {ssh}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--scenarios", nargs="+", default=["a", "b"], choices=["a", "b"])
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed rounds first (page cache, .pyc files, ansible's caches)")
    ap.add_argument("--json", help="also write every trial to this file")
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--scenario", choices=["a", "b"], help=argparse.SUPPRESS)
    ap.add_argument("--lab", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.scenario, args.lab)

    lab = Path(tempfile.mkdtemp(prefix="upgrader-fanout-"))
    servers = []
    trials: list[dict] = []
    try:
        servers = start_lab(lab, args.hosts)
        print(f"# {args.hosts} sshds on 127.0.0.2-{args.hosts + 1}; {versions()}")
        print(f"# preflight: {preflight(lab)}")
        print(f"# a changed host key for h00: {refusal_check(lab, args.tools)}", flush=True)
        for _ in range(args.warmup):
            for scenario in args.scenarios:
                for tool in args.tools:
                    trial(tool, scenario, lab)
        print(f"# load before: {load()}", flush=True)
        for run in range(args.runs):
            for scenario in args.scenarios:
                shift = run % len(args.tools)
                order = args.tools[shift:] + args.tools[:shift]
                for tool in order:
                    before, cpu0 = load(), server_cpu(servers)
                    result = trial(tool, scenario, lab)
                    time.sleep(SETTLE)     # let the listeners reap the closed connections
                    result["server_cpu"] = server_cpu(servers) - cpu0
                    result.update(tool=tool, scenario=scenario, run=run, load=before)
                    trials.append(result)
                    shown = (f"{result['seconds']:.3f} s (CPU {result['cpu']:.2f} s, "
                             f"sshd side {result['server_cpu']:.2f} s)"
                             if result["seconds"] else "FAILED")
                    print(f"run {run + 1} ({scenario}) {tool:12s} {shown}  load {before}"
                          + (f"  {result['error'][:300]}" if result.get("error") else ""),
                          flush=True)
        print(f"# load after: {load()}")
    finally:
        for server in servers:
            server.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(trials, indent=1))
        shutil.rmtree(lab, ignore_errors=True)
    report(trials, args.tools, args.scenarios)


PEERS = ("pssh", "fabric", "ansible-raw", "ansible-cmd")     # openssh, asyncssh: baselines


def report(trials: list[dict], tools: list[str], scenarios: list[str]) -> None:
    """Medians per tool and scenario, and ratios to upgrader: of the medians, and the median
    of the per-run ratios (the tools of one run saw the same load)."""

    def good(tool: str, scenario: str) -> list[dict]:
        return [t for t in trials
                if t["tool"] == tool and t["scenario"] == scenario and not t.get("error")]

    def med(tool: str, scenario: str, key: str = "seconds") -> float | None:
        got = [t[key] for t in good(tool, scenario)]
        return statistics.median(got) if got else None

    def paired(tool: str, scenario: str) -> float | None:
        base = {t["run"]: t["seconds"] for t in good("upgrader", scenario)}
        got = [t["seconds"] / base[t["run"]] for t in good(tool, scenario) if t["run"] in base]
        return statistics.median(got) if got else None

    head, rule = "| tool | host keys |", "| --- | --- |"
    for s in scenarios:
        head += (f" ({s}) median s | ({s}) min-max | ({s}) / upgrader | ({s}) per-run ratio |"
                 f" ({s}) client CPU s | ({s}) sshd-side CPU s |")
        rule += " ---: | ---: | ---: | ---: | ---: | ---: |"
    print("\n" + head + "\n" + rule)
    for tool in tools:
        row = f"| {tool} | {'not checked' if tool == 'pssh' else 'verified'} |"
        for s in scenarios:
            got = [t["seconds"] for t in good(tool, s)]
            failed = sum(1 for t in trials if t["tool"] == tool and t["scenario"] == s
                         and t.get("error"))
            m, base, pr = med(tool, s), med("upgrader", s), paired(tool, s)
            cpu, remote = med(tool, s, "cpu"), med(tool, s, "server_cpu")
            row += f" {m:.3f} |" if m else " - |"
            row += (f" {min(got):.2f}-{max(got):.2f}" if got else " -") + \
                (f", {failed} failed |" if failed else " |")
            row += f" {m / base:.2f} |" if m and base else " - |"
            row += f" {pr:.2f} |" if pr else " - |"
            row += f" {cpu:.2f} |" if cpu is not None else " - |"
            row += f" {remote:.2f} |" if remote is not None else " - |"
        print(row)
    up = {s: med("upgrader", s) for s in scenarios}
    peers = [p for p in PEERS if p in tools]
    if "a" in scenarios and up["a"]:
        fastest = min(((med(p, "a"), p) for p in peers if med(p, "a")), default=None)
        if fastest:
            print(f"\n(a) upgrader {up['a']:.3f} s vs the fastest peer {fastest[1]} "
                  f"{fastest[0]:.3f} s: {'met' if up['a'] <= fastest[0] else 'NOT met'} "
                  f"(ratio {up['a'] / fastest[0]:.2f})")
    if "b" in scenarios and up["b"]:
        slower = [p for p in peers if med(p, "b") and med(p, "b") <= up["b"]]
        print(f"(b) upgrader {up['b']:.3f} s; faster than every peer: "
              f"{'yes' if not slower else 'NO, not than ' + ', '.join(slower)}", end="")
        if med("ansible-cmd", "b"):
            r = med("ansible-cmd", "b") / up["b"]
            print(f"; ansible-cmd / upgrader = {r:.1f} ({'met' if r >= 5 else 'NOT met'}: >= 5)")
        else:
            print()


if __name__ == "__main__":
    main()
