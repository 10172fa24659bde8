"""``POST /v1/watch`` (issue 17 point 2 over the control API): the body's validation, the
union of what each open event stream's client watches (dropped with its stream), and a
``RemoteRollout.watch_hosts`` that sends a set only when it changed. In one process: a
ControlServer on a Unix socket in tmp_path over a recording handle; counts, never timings."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from upgrader.control.client import RemoteRollout
from upgrader.control.server import (
    MAX_HOST_NAME,
    MAX_WATCH_HOSTS,
    ControlServer,
    WatchRequestError,
    parse_watch_body,
)
from upgrader.events import Event

TOKEN = "test-token-not-secret"


# ---------------------------------------------------------------------- body validation


def test_a_valid_body_gives_the_stream_and_the_names_deduplicated_in_order():
    stream, hosts = parse_watch_body(json.dumps({"stream": "s1",
                                                 "hosts": ["b", "a", "b", "c"]}))
    assert stream == "s1" and hosts == ("b", "a", "c")
    assert parse_watch_body('{"stream": "s1", "hosts": []}') == ("s1", ())
    many = [f"web-{i}" for i in range(MAX_WATCH_HOSTS)]
    assert len(parse_watch_body(json.dumps({"stream": "s", "hosts": many}))[1]) == 2000


@pytest.mark.parametrize(("body", "message"), [
    ("", "must be a JSON object"),
    ("{not json", "body is not JSON"),
    ('["web-1"]', "must be a JSON object"),
    ('{"stream": "s", "hosts": ["a"], "rows": 3}', "unknown key(s) 'rows'"),
    ('{"hosts": ["a"]}', '"stream" must be the id of one of your open event streams'),
    ('{"stream": 7, "hosts": ["a"]}', '"stream" must be'),
    ('{"stream": "", "hosts": ["a"]}', '"stream" must be'),
    ('{"stream": "s"}', '"hosts" is missing'),
    ('{"stream": "s", "hosts": "web-1"}', '"hosts" must be a list of host names, not str'),
    ('{"stream": "s", "hosts": {"web-1": 1}}', "not dict"),
    ('{"stream": "s", "hosts": ["a", 5]}', '"hosts"[1] must be a non-empty string, not 5'),
    ('{"stream": "s", "hosts": ["a", ""]}', '"hosts"[1] must be a non-empty string'),
    ('{"stream": "s", "hosts": [null]}', '"hosts"[0] must be a non-empty string, not None'),
    (json.dumps({"stream": "s", "hosts": ["x" * (MAX_HOST_NAME + 1)]}),
     f'"hosts"[0] is {MAX_HOST_NAME + 1} characters long; at most {MAX_HOST_NAME}'),
    (json.dumps({"stream": "s", "hosts": [f"h{i}" for i in range(MAX_WATCH_HOSTS + 1)]}),
     f'"hosts" has {MAX_WATCH_HOSTS + 1} names; at most {MAX_WATCH_HOSTS}'),
])
def test_a_bad_body_is_refused_saying_what_and_where(body, message):
    with pytest.raises(WatchRequestError) as info:
        parse_watch_body(body)
    assert message in str(info.value)


# ---------------------------------------------------------------------- the server


class RecordingHandle:
    """A ``RolloutHandle`` with ``watch_hosts`` that records every call."""

    def __init__(self, with_watch: bool = True) -> None:
        self.history: list[Event] = [Event("rollout_started", 1.0, "r", 1, {})]
        self.calls: list[tuple[str, ...]] = []
        self._observers: list = []
        if not with_watch:
            self.watch_hosts = None     # type: ignore[assignment]

    def snapshot(self):
        return {"state": "RUNNING", "rollout": "r", "hosts": {}}

    def subscribe(self, callback):
        self._observers.append(callback)
        return lambda: self._observers.remove(callback)

    def watch_hosts(self, hosts):
        self.calls.append(tuple(hosts))

    def pause(self): ...
    def resume(self): ...
    def promote(self): ...
    def promote_all(self): ...
    def abort(self, rollback=True): ...


def run(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_for(predicate, timeout=10.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def post(path, body, *, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s, \
            s.post("http://x/v1/watch", headers=headers, data=body) as r:
        return r.status, json.loads(await r.text())


class OpenStream:
    """A raw ``GET /v1/events`` held open (past its ``caught_up`` line); ``id`` from its
    ``Upgrader-Stream`` header."""

    def __init__(self, path) -> None:
        self.path = path
        self.id = ""

    async def __aenter__(self):
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.path)),
            headers={"Authorization": f"Bearer {TOKEN}"})
        self.resp = await self.session.get("http://x/v1/events")
        self.id = self.resp.headers["Upgrader-Stream"]
        async for raw in self.resp.content:
            if json.loads(raw).get("kind") == "caught_up":
                break
        return self

    async def __aexit__(self, *exc):
        self.resp.close()
        await self.session.close()


def test_the_server_watches_the_union_of_open_streams_and_drops_a_closed_ones(tmp_path):
    async def main():
        handle = RecordingHandle()
        path = tmp_path / "ctl" / "w.sock"
        async with ControlServer(handle, socket_path=path, token=TOKEN,
                                 heartbeat=0.05) as srv, OpenStream(path) as a:
                async with OpenStream(path) as b:
                    assert a.id and b.id and a.id != b.id
                    status, body = await post(path, json.dumps({"stream": a.id,
                                                                "hosts": ["w1", "w2"]}))
                    assert (status, body["watched"]) == (200, 2)
                    status, body = await post(path, json.dumps({"stream": b.id,
                                                                "hosts": ["w2", "w3"]}))
                    assert (status, body["watched"]) == (200, 3)
                    assert handle.calls[-1] == ("w1", "w2", "w3")
                    # the same union again: the handle is not asked again
                    await post(path, json.dumps({"stream": b.id, "hosts": ["w3", "w2"]}))
                    assert len(handle.calls) == 2
                # b's connection ended: its hosts go (the server sees it at a heartbeat)
                await wait_for(lambda: handle.calls[-1] == ("w1", "w2"), what="b dropped")
                assert srv.watched == ("w1", "w2")
                # an empty list forgets a stream's set
                status, _ = await post(path, json.dumps({"stream": a.id, "hosts": []}))
                assert status == 200 and handle.calls[-1] == () and srv.watched == ()
                # a stream that ended (or never was) cannot watch
                status, body = await post(path, json.dumps({"stream": b.id, "hosts": ["w9"]}))
                assert status == 409 and "no open event stream" in body["error"]
                assert handle.calls[-1] == ()
                # bad input: 400 with what is wrong; nothing changed
                status, body = await post(path, json.dumps({"stream": a.id, "hosts": "w1"}))
                assert status == 400
                assert body["error"] == ('POST /v1/watch: "hosts" must be a list of host '
                                         "names, not str")
                # the token is required, as everywhere
                status, _ = await post(path, json.dumps({"stream": a.id, "hosts": ["w1"]}),
                                       token="wrong")
                assert status == 401
                assert handle.calls[-1] == () and len(handle.calls) == 4

    run(main())


def test_a_handle_without_watch_hosts_answers_501(tmp_path):
    async def main():
        handle = RecordingHandle(with_watch=False)
        path = tmp_path / "ctl" / "w.sock"
        async with ControlServer(handle, socket_path=path, token=TOKEN), OpenStream(path) as a:
            status, body = await post(path, json.dumps({"stream": a.id, "hosts": ["w1"]}))
            assert status == 501 and "does not take watched hosts" in body["error"]

    run(main())


# ---------------------------------------------------------------------- the client


def test_remote_watch_hosts_sends_only_changes_and_again_on_a_new_stream(tmp_path):
    async def main():
        handle = RecordingHandle()
        path = tmp_path / "ctl" / "w.sock"
        async with ControlServer(handle, socket_path=path, token=TOKEN,
                                 heartbeat=0.05) as srv:
            remote = RemoteRollout(path, TOKEN, heartbeat=0.05)
            await remote.connect()
            try:
                rows = [f"web-{i}" for i in range(30)]
                for _ in range(50):                 # the TUI on every tick, unchanged rows
                    remote.watch_hosts(rows)
                await wait_for(lambda: srv.watched == tuple(rows), what="the rows watched")
                assert remote.watch_posts == 1
                # a burst of scrolling: at most one request in flight, the last set wins
                for start in range(1, 40):
                    remote.watch_hosts(f"web-{i}" for i in range(start, start + 30))
                last = tuple(f"web-{i}" for i in range(39, 69))
                await wait_for(lambda: srv.watched == last, what="the last rows watched")
                assert remote.watch_posts == 2     # the first set, then the last
                posts = remote.watch_posts
                # the controller ends every stream: the client reconnects and sends its set
                # again on the new stream (the old one's set went with it)
                srv.drop_streams()
                await wait_for(lambda: remote.watch_posts == posts + 1, what="re-sent")
                await wait_for(lambda: srv.watched == last, what="watched again")
                assert srv.active_streams == 1 and len(srv._watches) == 1
                remote.watch_hosts([])
                await wait_for(lambda: srv.watched == (), what="nothing watched")
            finally:
                await remote.aclose()
            # the client is gone: nothing stays watched
            await wait_for(lambda: srv.active_streams == 0, what="the stream closed")
            assert srv.watched == () and handle.calls[-1] == ()

    run(main())


# ---------------------------------------------------------------------- the TUI, attached


def test_an_attached_tui_has_the_engine_watch_its_visible_rows(fleet_factory, tmp_path):
    """The TUI on a ``RemoteRollout`` (as ``upgrader attach``) over a ControlServer on a real
    Engine of 200 hosts: the rows on screen reach ``Engine.watch_hosts``, and scrolling
    changes them; detaching forgets them."""
    from upgrader.clock import LoopClock
    from upgrader.engine.core import Engine, Providers
    from upgrader.providers.noop import NoopBalancer, NoopHealthCheck, NoopTransport
    from upgrader.strategies import get
    from upgrader.tui import make_app
    from upgrader.tui.widgets import FleetTable

    class _Where:
        def error(self, key, message):
            raise AssertionError(f"{key}: {message}")

    async def main():
        fleet = fleet_factory(200)
        module = get("canary")
        plan = module.compile(fleet, module.parse_params({"steps": [{"hosts": "100%"}]},
                                                         _Where()))
        engine = Engine(fleet, plan, Providers(NoopTransport(), NoopBalancer(),
                                               NoopHealthCheck()), clock=LoopClock())
        watched = lambda: engine.verification.figures.watched   # noqa: E731
        path = tmp_path / "ctl" / "w.sock"
        async with ControlServer(engine, socket_path=path, token=TOKEN,
                                 heartbeat=0.05) as srv:
            remote = RemoteRollout(path, TOKEN, heartbeat=0.05)
            await remote.connect()
            asked: list[tuple[str, ...]] = []
            send = remote.watch_hosts
            remote.watch_hosts = lambda names: (asked.append(tuple(names)),  # type: ignore
                                                send(names))
            app = make_app(remote, on_quit=lambda choice: choice)
            async with app.run_test(size=(140, 45)) as pilot:

                async def until(predicate, what):
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 10
                    while not predicate():
                        assert loop.time() < deadline, f"timed out waiting for {what}"
                        await pilot.pause(0.02)

                table = app.screen.query_one(FleetTable)
                await until(lambda: bool(watched()), "the visible rows watched")
                first = table.visible_hosts()
                assert watched() == first and first[0] == "web-0001"
                assert 10 < len(first) < 60                     # a screenful, not the fleet
                await pilot.press("pagedown", "pagedown")
                await until(lambda: watched() != first, "the next rows watched")
                assert watched() == table.visible_hosts() and "web-0001" not in watched()
                # what reached the controller is what the TUI asked for, no more often
                # (a stream reopened after a missed heartbeat on a loaded machine is told
                # the set again: one post more per reopened stream)
                reopened = remote.streams_opened - 1
                assert asked[-1] == watched()
                assert remote.watch_posts <= len(asked) + reopened
            await remote.aclose()
            await wait_for(lambda: srv.active_streams == 0, what="the stream closed")
            assert watched() == () and srv.watched == ()

    run(main())
