"""The local control API in one process: a ControlServer over an Engine with the no-op
providers, on a Unix socket in tmp_path, driven by a RemoteRollout (real time, short waits)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat

import aiohttp
import pytest

from upgrader import strategies
from upgrader.clock import LoopClock
from upgrader.control.client import RemoteRollout, event_from_json
from upgrader.control.controller import control_paths, read_token, write_token
from upgrader.control.handle import RolloutHandle
from upgrader.control.server import ControlServer
from upgrader.engine.core import Engine, Providers
from upgrader.errors import ConfigError, PolicyRefused, UpgraderError
from upgrader.events import Event
from upgrader.model import StrategySpec, Timing, VerifySpec
from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport

TOKEN = "test-token-not-secret"
STEPS_PROMOTE = [{"hosts": 1, "pause": "promote"}, {"hosts": "100%"}]


class _Where:
    def error(self, key, message):
        raise AssertionError(f"{key}: {message}")


def make_engine(fleet_factory, *, n=4, steps=STEPS_PROMOTE, delay=0.05):
    fleet = fleet_factory(n)
    module = strategies.get("canary")
    params = module.parse_params({"steps": steps}, _Where())
    fleet = dataclasses.replace(
        fleet, strategy=StrategySpec("canary", params, on_failure="rollback"),
        verify=VerifySpec(for_=0.2, interval=0.05, no_data="pass", min_requests=0,
                          consecutive_failures=2),
        timing=Timing(host_upgrade=0.1, health_timeout=2.0, drain_timeout=0.5,
                      health_interval=0.01))
    plan = module.compile(fleet, fleet.strategy.params)
    providers = Providers(NoopTransport(delay=delay), NoopBalancer(), NoopHealthCheck())
    return fleet, Engine(fleet, plan, providers, clock=LoopClock())


async def seed(fleet, engine):
    for host in fleet.main_hosts:
        await engine.providers.balancer.set_backend(host.name, address=host.address,
                                                    port=host.port, pool=fleet.releases.current)


async def wait_for(predicate, timeout=10.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sock_path(tmp_path):
    return tmp_path / "ctl" / "test.control.sock"


async def raw_request(path, method, url, *, token=TOKEN, json_body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s, \
            s.request(method, f"http://x{url}", headers=headers, json=json_body) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def test_remote_sees_every_event_in_order_and_controls_work(fleet_factory, tmp_path):
    """pause -> PAUSED, resume, promote skips the indefinite pause; the client's history is
    the engine's, seq for seq, without gaps or duplicates."""

    async def main():
        fleet, engine = make_engine(fleet_factory)
        await seed(fleet, engine)
        path = sock_path(tmp_path)
        async with ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
            remote = RemoteRollout(path, TOKEN)
            assert isinstance(remote, RolloutHandle)
            await remote.connect()
            assert remote.snapshot()["state"] == "PENDING"
            received: list[Event] = []
            remote.subscribe(lambda e: received.append(e) if e.seq else None)
            task = asyncio.create_task(engine.run())
            await wait_for(lambda: remote.snapshot()["state"] == "RUNNING", what="RUNNING")
            remote.pause()
            await wait_for(lambda: engine.state.value == "PAUSED", what="engine PAUSED")
            await wait_for(lambda: remote.snapshot()["state"] == "PAUSED", what="remote PAUSED")
            await asyncio.sleep(0.3)
            assert engine.state.value == "PAUSED"
            remote.resume()
            await wait_for(lambda: remote.snapshot()["state"] == "WAITING", what="WAITING")
            assert remote.snapshot()["reason"] == "until promoted"
            await asyncio.sleep(0.2)
            assert engine.state.value == "WAITING"      # an indefinite pause holds
            remote.promote()
            outcome = await remote.wait_finished()
            result = await task
            assert outcome["outcome"] == "completed" == result.outcome.value
            assert remote.finished
            await wait_for(lambda: remote.snapshot()["hosts_on_target"] == 4, what="status")
            assert remote.snapshot()["state"] == "COMPLETED"
            await remote.aclose()
        engine_seqs = [e.seq for e in engine.history]
        assert engine_seqs == list(range(1, len(engine_seqs) + 1))
        assert [e.seq for e in remote.history] == engine_seqs
        assert [e.seq for e in received] == engine_seqs
        assert [e.to_json() for e in remote.history] == [
            json.loads(e.dumps()) for e in engine.history]
        actions = [e.data["action"] for e in remote.history if e.kind == "control"]
        assert actions == ["pause", "resume", "promote"]
        assert not path.exists()        # removed on close

    run(main())


def test_abort_with_rollback_ends_rolled_back(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        await seed(fleet, engine)
        path = sock_path(tmp_path)
        async with ControlServer(engine, socket_path=path, token=TOKEN):
            task = asyncio.create_task(engine.run())
            async with RemoteRollout(path, TOKEN) as remote:
                await wait_for(lambda: remote.snapshot()["state"] == "WAITING", what="WAITING")
                remote.abort(rollback=True)
                outcome = await remote.wait_finished()
                assert outcome["outcome"] == "rolled_back"
                assert remote.snapshot()["state"] == "ROLLED BACK"
            result = await task
        assert result.outcome.value == "rolled_back"
        assert all(r == fleet.releases.current for r in result.hosts.values())

    run(main())


def test_auth_status_control_and_errors(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        path = sock_path(tmp_path)
        async with ControlServer(engine, socket_path=path, token=TOKEN):
            for token in (None, "wrong", TOKEN + "x", ""):
                for method, url in (("GET", "/v1/status"), ("GET", "/v1/events"),
                                    ("POST", "/v1/control/pause"), ("GET", "/nope")):
                    status, ctype, body = await raw_request(path, method, url, token=token)
                    assert status == 401, (token, url)
                    assert ctype.startswith("application/json")
                    assert TOKEN not in body
            status, _, body = await raw_request(path, "GET", "/v1/status")
            assert status == 200
            snap = json.loads(body)
            assert snap["state"] == "PENDING" and snap["last_seq"] == 0 and TOKEN not in body
            status, _, body = await raw_request(path, "POST", "/v1/control/explode")
            assert status == 404 and "unknown action" in json.loads(body)["error"]
            status, _, body = await raw_request(path, "POST", "/v1/control/abort",
                                                json_body={"rollback": "yes"})
            assert status == 400
            status, _, body = await raw_request(path, "GET", "/v1/events?since=-1")
            assert status == 400
            status, _, body = await raw_request(path, "POST", "/v1/control/promote")
            assert status == 200 and json.loads(body) == {"ok": True, "action": "promote",
                                                          "state": "PENDING"}
            status, _, _ = await raw_request(path, "GET", "/v1/nothing-here")
            assert status == 404
            # a client with a wrong token is told so, clearly
            with pytest.raises(UpgraderError, match="refused the token"):
                await RemoteRollout(path, "wrong").connect()
            assert "token" not in repr(RemoteRollout(path, TOKEN)).replace("token=", "")
            assert TOKEN not in repr(RemoteRollout(path, TOKEN))

    run(main())


def test_control_failure_is_a_local_log_event_not_an_exception(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        path = sock_path(tmp_path)
        server = ControlServer(engine, socket_path=path, token=TOKEN)
        await server.start()
        remote = RemoteRollout(path, TOKEN, reconnect_timeout=0.3)
        await remote.connect()
        logs: list[Event] = []
        remote.subscribe(lambda e: logs.append(e) if e.kind == "log" else None)
        await server.aclose()
        remote.pause()                      # must not raise
        await wait_for(lambda: any("pause" in e.data["message"] for e in logs), what="log")
        assert all(e.seq == 0 and e.data["local"] for e in logs)
        with pytest.raises(UpgraderError, match="has not answered"):
            await remote.wait_finished()
        await remote.aclose()

    run(main())


def test_reconnect_resumes_from_last_seq_without_duplicates(fleet_factory, tmp_path):
    """The server drops every stream (and later goes away and comes back on the same socket)
    while the rollout goes on; the client resumes after its last seq: nothing lost, nothing
    twice."""

    async def main():
        fleet, engine = make_engine(fleet_factory, n=6, steps=[
            {"hosts": 1, "pause": "promote"}, {"hosts": 2, "pause": "promote"},
            {"hosts": "100%"}])
        await seed(fleet, engine)
        path = sock_path(tmp_path)
        server = ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2)
        await server.start()
        remote = RemoteRollout(path, TOKEN)
        await remote.connect()
        seen: list[int] = []
        notes: list[str] = []
        remote.subscribe(lambda e: seen.append(e.seq) if e.seq else notes.append(
            e.data["message"]))
        task = asyncio.create_task(engine.run())
        await wait_for(lambda: remote.snapshot()["state"] == "WAITING", what="first pause")
        server.drop_streams()
        await asyncio.sleep(0.05)
        engine.promote()                    # events happen while the client reconnects
        await wait_for(lambda: remote.snapshot().get("step") is not None
                       and remote.snapshot()["state"] == "WAITING"
                       and remote.snapshot()["step"] > 2, what="second pause")
        # the controller's server goes away entirely; the rollout goes on without watchers
        await server.aclose()
        assert not path.exists()
        engine.promote()
        await wait_for(lambda: engine.state.value == "COMPLETED", what="completed")
        server = ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2)
        await server.start()
        outcome = await remote.wait_finished()
        assert outcome["outcome"] == "completed"
        await task
        engine_seqs = [e.seq for e in engine.history]
        assert seen == engine_seqs
        assert [e.seq for e in remote.history] == engine_seqs
        assert any("reconnected" in n for n in notes)
        await remote.aclose()
        await server.aclose()

    run(main())


def test_events_lost_from_history_are_a_gap_notice_and_a_status_refresh(fleet_factory,
                                                                        tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        engine.history = __import__("collections").deque(maxlen=5)
        path = sock_path(tmp_path)
        server = ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2)
        await server.start()
        remote = RemoteRollout(path, TOKEN)
        await remote.connect()
        notes: list[str] = []
        remote.subscribe(lambda e: notes.append(e.data["message"]) if not e.seq else None)
        await engine.bus.emit("log", level="info", message="first")
        await wait_for(lambda: remote.last_seq == 1, what="first event")
        await server.aclose()
        for i in range(20):                 # more than the controller keeps
            await engine.bus.emit("log", level="info", message=f"while away {i}")
        server = ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.2)
        await server.start()
        await wait_for(lambda: remote.last_seq == 21, what="caught up")
        assert [e.seq for e in remote.history] == [1, 17, 18, 19, 20, 21]
        assert any("events 2..16 are no longer" in n for n in notes)
        await wait_for(lambda: remote.snapshot()["last_seq"] == 21, what="status refresh")
        await remote.aclose()
        await server.aclose()

    run(main())


def test_stale_socket_is_replaced_and_live_one_refused(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        path = sock_path(tmp_path)
        path.parent.mkdir(parents=True)
        import socket as socketlib

        stale = socketlib.socket(socketlib.AF_UNIX)
        stale.bind(str(path))
        stale.close()                       # a file nobody listens on: a crashed controller
        assert path.exists()
        async with ControlServer(engine, socket_path=path, token=TOKEN):
            with pytest.raises(PolicyRefused, match=str(path)):
                await ControlServer(engine, socket_path=path, token=TOKEN).start()
            status, _, _ = await raw_request(path, "GET", "/v1/status")
            assert status == 200            # the live one is untouched
        other = tmp_path / "plain-file"
        other.write_text("x")
        with pytest.raises(UpgraderError, match="not a socket"):
            await ControlServer(engine, socket_path=other, token=TOKEN).start()

    run(main())


def test_stream_replays_history_then_ends_after_rollout_finished(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory, steps=[{"hosts": "100%"}])
        await seed(fleet, engine)
        await engine.run()
        path = sock_path(tmp_path)
        async with ControlServer(engine, socket_path=path, token=TOKEN):
            status, ctype, body = await raw_request(path, "GET", "/v1/events?since=3")
            assert status == 200 and ctype.startswith("application/x-ndjson")
            lines = [json.loads(x) for x in body.splitlines()]
            events = [event_from_json(x) for x in lines if "seq" in x]
            assert [e.seq for e in events] == [e.seq for e in engine.history if e.seq > 3]
            assert events[-1].kind == "rollout_finished"
            assert {"kind": "caught_up", "last_seq": events[-1].seq} in lines
            # a late attach gets the whole story and the end
            async with RemoteRollout(path, TOKEN) as remote:
                assert remote.finished
                assert (await remote.wait_finished())["outcome"] == "completed"
                assert len(remote.history) == len(engine.history)

    run(main())


def test_slow_client_is_dropped_and_heartbeats_flow(fleet_factory, tmp_path):
    async def main():
        fleet, engine = make_engine(fleet_factory)
        path = sock_path(tmp_path)
        server = ControlServer(engine, socket_path=path, token=TOKEN, heartbeat=0.05,
                               max_backlog=3)
        async with server:
            async with aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(path))) as session, \
                    session.get("http://x/v1/events",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                first = json.loads(await resp.content.readline())
                assert first["kind"] == "caught_up"
                beat = json.loads(await resp.content.readline())
                assert beat == {"kind": "heartbeat"}
                # the client stops reading; the engine emits more than the backlog allows
                for i in range(5):
                    await engine.bus.emit("log", level="info", message=f"m{i}")
                rest = (await resp.content.read()).decode().splitlines()
                kinds = [json.loads(x)["kind"] for x in rest]
                assert kinds[-1] == "dropped"
            assert server.active_streams == 0

    run(main())


def test_control_paths_and_token_files(tmp_path):
    sock, token = control_paths(tmp_path, "shop")
    assert sock == tmp_path.resolve() / "shop.control.sock"
    assert token == tmp_path.resolve() / "shop.control.token"
    deep = tmp_path / ("d" * 90) / ("e" * 40)
    long_sock, long_token = control_paths(deep, "shop")
    assert long_token.parent == deep.resolve()
    assert long_sock.parent == __import__("pathlib").Path(f"/tmp/upgrader-{os.getuid()}")
    assert len(os.fsencode(str(long_sock))) <= 107
    assert control_paths(deep, "shop")[0] == long_sock          # stable
    assert control_paths(deep, "cart")[0] != long_sock          # per fleet
    secret = write_token(token)
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    assert read_token(token) == secret and len(secret) >= 32
    assert write_token(token) != secret
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644: group or others .*chmod 600"):
        read_token(token)
