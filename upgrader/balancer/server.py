"""The built-in L7 load balancer: a reverse proxy with weights, drain, group and cohort
routing, maintenance mode, per-backend stats, and a token-protected JSON admin API. The data
path (users' requests) is proxy.py, on raw asyncio protocols; the admin API is aiohttp, here.

It runs as a process of its own (``python -m upgrader.balancer`` or ``upgrader balancer
serve``) so users' traffic goes on if the controller dies. See docs/BALANCER.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..addresses import parse_host_port
from ..errors import (
    BadRequest,  # a body or parameter that does not validate: answered 400
    ConfigError,
)
from ..hashing import in_percent
from ..providers.base import BACKEND_STATES, LATENCY_BUCKETS
from ..tokens import (
    bearer_token,
    ensure_generated_token,
    generated_token_path,
    read_token_file,
    token_dir,
    token_matches,
)
from .metrics import TableMetrics
from .proxy import ProxyServer, event_loop_factory

log = logging.getLogger("upgrader.balancer")

MAX_WEIGHT = 256
DRAIN_POLL_SECONDS = 0.02
MAX_DRAIN_WAIT = 3600.0
PROXY_SHUTDOWN_SECONDS = 5.0
ADMIN_SHUTDOWN_SECONDS = 0.5


# --------------------------------------------------------------------------------------------
# The table


@dataclass(slots=True, eq=False)
class Tally:
    """Cumulative counters of one pool: what its backends served while they were in it."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def public(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency_buckets": list(self.latency)}


@dataclass(slots=True, eq=False)
class Backend:
    name: str
    address: str
    port: int
    pool: str
    weight: int
    state: str
    base_url: str = ""
    inflight: int = 0
    requests: int = 0
    errors: int = 0
    connect_failures: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    #: for /metrics: answers by HTTP status (502/504 when the backend failed) and the sum of
    #: their latencies (a Prometheus histogram has one)
    statuses: dict[int, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    down_until: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: the tally of the pool it is in now (``Table.rebuild`` keeps it so): a request is
    #: credited to the pool that served it, and a move does not carry history along
    pool_tally: Tally = field(default_factory=Tally)

    def __post_init__(self) -> None:
        self.base_url = _base_url(self.address, self.port)
        self.idle.set()

    def reset_stats(self) -> None:
        self.requests = self.errors = self.connect_failures = 0
        self.latency = [0] * len(LATENCY_BUCKETS)
        self.statuses = {}
        self.latency_sum = 0.0
        self.down_until = 0.0

    def record(self, latency: float, status: int) -> None:
        """Count one answer (``status`` >= 500 is an error) that took ``latency`` seconds."""
        index = bisect.bisect_left(LATENCY_BUCKETS, latency)
        tally = self.pool_tally
        self.requests += 1
        tally.requests += 1
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.latency_sum += latency
        if status >= 500:
            self.errors += 1
            tally.errors += 1
        self.latency[index] += 1
        tally.latency[index] += 1

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency_buckets": list(self.latency), "inflight": self.inflight,
                "connect_failures": self.connect_failures}

    def public(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "pool": self.pool,
                "weight": self.weight, "state": self.state, "inflight": self.inflight}


def _base_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Routes:
    groups: Mapping[str, str]
    cohorts: tuple[tuple[str, float, str], ...]       # (name, percent, pool)
    default: str | None
    group_header: str = "X-User-Group"
    user_header: str = "X-User"

    def public(self) -> dict[str, Any]:
        return {
            "groups": dict(self.groups),
            "cohorts": [{"name": n, "percent": p, "pool": pool} for n, p, pool in self.cohorts],
            "default": self.default,
            "group_header": self.group_header,
            "user_header": self.user_header,
        }


@dataclass(slots=True)
class Counters:
    maintenance_responses: int = 0
    no_backend: int = 0
    fallbacks: int = 0
    retries: int = 0


class Table:
    """Backends, split, routes and maintenance; candidate lists are rebuilt on every admin
    change so that choosing a backend is one dict look-up and one weighted draw."""

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self.split: dict[str, float] | None = None
        self.routes: Routes | None = None
        self.maintenance = False
        self.retry_after = 60
        self.counters = Counters()
        #: cumulative counters per pool name, kept when a pool empties (as HAProxy's)
        self.pool_tallies: dict[str, Tally] = {}
        self._by_pool: dict[str, list[Backend]] = {}
        self._all: list[Backend] = []
        self._split_pools: list[str] = []
        self._split_weights: list[float] = []

    def rebuild(self) -> None:
        by_pool: dict[str, list[Backend]] = {}
        every: list[Backend] = []
        tallies = self.pool_tallies
        for backend in self.backends.values():
            tally = tallies.get(backend.pool)
            if tally is None:
                tally = tallies[backend.pool] = Tally()
            backend.pool_tally = tally
            if backend.state == "ready" and backend.weight > 0:
                by_pool.setdefault(backend.pool, []).append(backend)
                every.append(backend)
        self._by_pool, self._all = by_pool, every
        pools = [(p, w) for p, w in (self.split or {}).items() if w > 0]
        self._split_pools = [p for p, _ in pools]
        self._split_weights = [w for _, w in pools]

    # -- selection

    def choose_pool(self, header: Callable[[str], str | None],
                    cookie: Callable[[str], str | None]) -> str | None:
        """The pool the routes or the split give a request, read through ``header`` (a
        request header by name) and ``cookie`` (a cookie by name); None: any pool."""
        routes = self.routes
        if routes is not None:
            # the Cookie header is parsed only when the header did not answer
            group = header(routes.group_header) or cookie("group")
            if group and group in routes.groups:
                return routes.groups[group]
            if routes.cohorts:
                user = header(routes.user_header) or cookie("user")
                if user:
                    for _name, percent, pool in routes.cohorts:
                        if in_percent(user, percent):
                            return pool
            if routes.default is not None:
                return routes.default
        if self._split_pools:
            return random.choices(self._split_pools, self._split_weights)[0]
        return None

    def choose_backend(self, pool: str | None, exclude: tuple[Backend, ...] = ()) -> Backend | None:
        """A weighted draw among the pool's candidates (or all of them if ``pool`` is None);
        falls back to any ready backend, counting a fallback. None: nothing is ready."""
        if pool is not None:
            chosen = _draw(self._by_pool.get(pool, ()), exclude)
            if chosen is not None:
                return chosen
            if not exclude:
                # a retry that widens its search is counted as a retry, not a fallback
                if not self._all:
                    return None
                self.counters.fallbacks += 1
        return _draw(self._all, exclude)


def _draw(candidates: list[Backend] | tuple[()], exclude: tuple[Backend, ...]) -> Backend | None:
    now = time.monotonic()
    usable: list[Backend] = []
    suspect: list[Backend] = []
    for backend in candidates:
        if backend in exclude:
            continue
        (suspect if backend.down_until > now else usable).append(backend)
    # a backend that just refused a connection is skipped only while another can serve
    pick_from = usable or suspect
    if not pick_from:
        return None
    if len(pick_from) == 1:
        return pick_from[0]
    total = 0
    for backend in pick_from:
        total += backend.weight
    point = random.random() * total
    for backend in pick_from:
        point -= backend.weight
        if point < 0:
            return backend
    return pick_from[-1]


# --------------------------------------------------------------------------------------------
# The admin API


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _auth_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every admin request needs ``Authorization: Bearer <token>`` (the scheme in any case,
    the token compared in constant time); there is no admin API without a token."""
    if not token:
        raise ValueError("the admin API needs a non-empty token")
    expected = token.encode("utf-8")

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        if not token_matches(bearer_token(request.headers.get("Authorization")), expected):
            return _json_error(401, "missing or wrong bearer token",
                               **{"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json_error(400, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_error(exc.status, exc.reason)

    return middleware


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _only(data: Mapping[str, Any], allowed: set[str], where: str = "body") -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown key(s) in {where}: {', '.join(unknown)}"
                         f" (allowed: {', '.join(sorted(allowed))})")


def _string(data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}{key} must be a non-empty string")
    return value


def _integer(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"{key} must be in {low}..{high}, got {value}")
    return value


def _percent(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a number, got {value!r}")
    if not 0 <= value <= 100:
        raise BadRequest(f"{key} must be in 0..100, got {value}")
    return float(value)


def _state(value: Any) -> str:
    if value not in BACKEND_STATES:
        raise BadRequest(f"state must be one of {', '.join(BACKEND_STATES)}, got {value!r}")
    return str(value)


#: the longest holder object ``POST /admin/lock`` accepts (it is a few names and numbers)
MAX_LOCK_HOLDER_BYTES = 4096


def _lock_holder(data: Mapping[str, Any]) -> dict[str, Any]:
    holder = data.get("holder")
    if not isinstance(holder, dict):
        raise BadRequest("holder must be an object with at least an id")
    _string(holder, "id", "holder.")
    if len(json.dumps(holder)) > MAX_LOCK_HOLDER_BYTES:
        raise BadRequest(f"holder must be at most {MAX_LOCK_HOLDER_BYTES} bytes of JSON")
    return {key: value for key, value in holder.items() if key != "age"}


class Admin:
    def __init__(self, table: Table, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        #: the fleet lock (docs/BALANCER.md, "The fleet lock"): the holder object, and when
        #: (on ``clock``) it was last taken or renewed. Each handler checks and sets it with
        #: no await in between, so taking it is atomic in this process.
        self.lock: dict[str, Any] | None = None
        self.lock_renewed = 0.0
        self._clock = clock
        self._metrics: TableMetrics | None = None

    async def get_metrics(self, request: web.Request) -> web.Response:
        """The table's counters in the Prometheus text format (built when scraped: the data
        path keeps only its own counters)."""
        if self._metrics is None:
            self._metrics = TableMetrics(self.table)
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/state", self.get_state),
            web.put("/admin/backends/{name}", self.put_backend),
            web.delete("/admin/backends/{name}", self.delete_backend),
            web.post("/admin/backends/{name}/state", self.post_backend_state),
            web.get("/admin/backends/{name}/drained", self.get_drained),
            web.put("/admin/split", self.put_split),
            web.put("/admin/routes", self.put_routes),
            web.put("/admin/maintenance", self.put_maintenance),
            web.get("/admin/stats", self.get_stats),
            web.post("/admin/stats", self.post_stats),
            web.get("/metrics", self.get_metrics),
            web.get("/admin/lock", self.get_lock),
            web.post("/admin/lock", self.post_lock),
            web.put("/admin/lock", self.put_lock),
            web.delete("/admin/lock", self.delete_lock),
        ]

    # -- the fleet lock

    def _lock_json(self) -> dict[str, Any] | None:
        if self.lock is None:
            return None
        return {**self.lock, "age": round(max(0.0, self._clock() - self.lock_renewed), 3)}

    async def get_lock(self, request: web.Request) -> web.Response:
        return web.json_response({"lock": self._lock_json()})

    async def post_lock(self, request: web.Request) -> web.Response:
        """Take the lock: free, already ours, or held by ``replace`` (a dead holder)."""
        data = await _body(request)
        _only(data, {"holder", "replace"})
        holder = _lock_holder(data)
        replace = data.get("replace")
        if replace is not None and (not isinstance(replace, str) or not replace):
            raise BadRequest("replace must be a non-empty string or null")
        current = self.lock
        if current is not None and current["id"] not in (holder["id"], replace):
            return web.json_response({"taken": False, "lock": self._lock_json(),
                                      "error": "the fleet lock is held"}, status=409)
        self.lock, self.lock_renewed = holder, self._clock()
        log.info("fleet lock taken by %s%s", holder["id"],
                 f" (replacing {current['id']})" if current is not None
                 and current["id"] != holder["id"] else "")
        return web.json_response({"taken": True, "lock": self._lock_json()})

    async def put_lock(self, request: web.Request) -> web.Response:
        """Renew the lock (heartbeat, new holder fields) while ``holder.id`` holds it."""
        data = await _body(request)
        _only(data, {"holder"})
        holder = _lock_holder(data)
        if self.lock is None or self.lock["id"] != holder["id"]:
            return web.json_response({"renewed": False, "lock": self._lock_json(),
                                      "error": "not the holder of the fleet lock"}, status=409)
        self.lock, self.lock_renewed = holder, self._clock()
        return web.json_response({"renewed": True, "lock": self._lock_json()})

    async def delete_lock(self, request: web.Request) -> web.Response:
        """Release the lock held by ``?id=``; without it, whoever holds it (unlock by hand)."""
        lock_id = request.query.get("id")
        current = self._lock_json()
        if current is None:
            return web.json_response({"released": None})
        if lock_id is not None and current["id"] != lock_id:
            return web.json_response({"released": None, "lock": current,
                                      "error": "not the holder of the fleet lock"}, status=409)
        self.lock = None
        log.info("fleet lock of %s released%s", current["id"],
                 "" if lock_id is not None else " by hand")
        return web.json_response({"released": current})

    def _backend(self, request: web.Request) -> Backend:
        name = request.match_info["name"]
        backend = self.table.backends.get(name)
        if backend is None:
            raise web.HTTPNotFound(reason=f"unknown backend {name!r}")
        return backend

    def _state_json(self) -> dict[str, Any]:
        table = self.table
        return {
            "backends": {name: b.public() for name, b in table.backends.items()},
            "split": dict(table.split) if table.split is not None else None,
            "routes": table.routes.public() if table.routes is not None else None,
            "maintenance": table.maintenance,
            "retry_after": table.retry_after,
        }

    async def get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._state_json())

    async def put_backend(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = await _body(request)
        _only(data, {"address", "port", "pool", "weight", "state"})
        address = _string(data, "address")
        port = _integer(data.get("port"), "port", 1, 65535)
        pool = _string(data, "pool")
        weight = _integer(data.get("weight", 100), "weight", 0, MAX_WEIGHT)
        state = _state(data.get("state", "ready"))
        table = self.table
        backend = table.backends.get(name)
        if backend is None:
            backend = Backend(name, address, port, pool, weight, state)
            table.backends[name] = backend
        else:
            if (backend.address, backend.port) != (address, port):
                backend.address, backend.port = address, port
                backend.base_url = _base_url(address, port)
                backend.reset_stats()
            backend.pool, backend.weight, backend.state = pool, weight, state
        table.rebuild()
        log.info("backend %s = %s:%d pool=%s weight=%d state=%s",
                 name, address, port, pool, weight, state)
        return web.json_response({"backend": name, **backend.public()})

    async def delete_backend(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        del self.table.backends[backend.name]
        self.table.rebuild()
        log.info("backend %s removed", backend.name)
        return web.json_response({"removed": backend.name})

    async def post_backend_state(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        data = await _body(request)
        _only(data, {"state", "pool"})
        state = _state(data.get("state"))
        pool = data.get("pool")
        if pool is not None and (not isinstance(pool, str) or not pool):
            raise BadRequest("pool must be a non-empty string or null")
        backend.state = state
        if pool is not None:
            backend.pool = pool
        self.table.rebuild()
        log.info("backend %s state=%s pool=%s", backend.name, state, backend.pool)
        return web.json_response({"backend": backend.name, **backend.public()})

    async def get_drained(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        raw = request.query.get("timeout", "0")
        try:
            timeout = float(raw)
        except ValueError:
            raise BadRequest(f"timeout must be a number of seconds, got {raw!r}") from None
        if not math.isfinite(timeout) or timeout < 0:
            raise BadRequest(f"timeout must be >= 0, got {raw!r}")
        timeout = min(timeout, MAX_DRAIN_WAIT)
        if backend.inflight > 0 and timeout > 0:
            try:
                await asyncio.wait_for(backend.idle.wait(), timeout)
            except TimeoutError:
                pass
        return web.json_response({"inflight": backend.inflight})

    async def put_split(self, request: web.Request) -> web.Response:
        data = await _body(request)
        _only(data, {"weights"})
        if "weights" not in data:
            raise BadRequest("weights is required (an object pool -> percent, or null)")
        weights = data["weights"]
        if weights is None:
            split = None
        else:
            if not isinstance(weights, dict):
                raise BadRequest("weights must be an object pool -> percent, or null")
            split = {}
            for pool, value in weights.items():
                if not pool:
                    raise BadRequest("weights: a pool name must be non-empty")
                split[pool] = _percent(value, f"weights[{pool!r}]")
            total = sum(split.values())
            if total > 100.0 + 1e-6:
                raise BadRequest(f"weights must sum to at most 100, got {total:g}")
        self.table.split = split
        self.table.rebuild()
        log.info("split = %s", split)
        return web.json_response({"split": split})

    async def put_routes(self, request: web.Request) -> web.Response:
        data = await _body(request)
        _only(data, {"routes"})
        if "routes" not in data:
            raise BadRequest("routes is required (an object, or null)")
        raw = data["routes"]
        routes = None if raw is None else _parse_routes(raw)
        self.table.routes = routes
        self.table.rebuild()
        log.info("routes = %s", routes)
        return web.json_response({"routes": routes.public() if routes else None})

    async def put_maintenance(self, request: web.Request) -> web.Response:
        data = await _body(request)
        _only(data, {"on", "retry_after"})
        on = data.get("on")
        if not isinstance(on, bool):
            raise BadRequest("on must be true or false")
        retry_after = _integer(data.get("retry_after", self.table.retry_after),
                               "retry_after", 0, 86400)
        self.table.maintenance, self.table.retry_after = on, retry_after
        log.info("maintenance = %s (retry after %ds)", on, retry_after)
        return web.json_response({"maintenance": on, "retry_after": retry_after})

    async def get_stats(self, request: web.Request) -> web.Response:
        """Every backend's counters and the balancer's own; ``?by=pool``: the pools'
        counters instead; ``?backend=NAME&backend=NAME2``: only those backends'."""
        query = request.query
        _only(query, {"by", "backend"}, "the query")
        if "by" in query:
            by = query.getall("by")
            if by != ["pool"]:
                raise BadRequest(f"by must be 'pool' (once), got {', '.join(map(repr, by))}")
            if "backend" in query:
                raise BadRequest("by=pool and backend= cannot be combined")
            return web.json_response({
                "pools": {pool: tally.public()
                          for pool, tally in self.table.pool_tallies.items()},
                "latency_bounds": _LATENCY_BOUNDS,
            })
        if "backend" in query:
            return self._some_stats(query.getall("backend"), "backend=")
        table = self.table
        counters = table.counters
        return web.json_response({
            "backends": {name: b.stats() for name, b in table.backends.items()},
            "latency_bounds": _LATENCY_BOUNDS,
            "maintenance_responses": counters.maintenance_responses,
            "no_backend": counters.no_backend,
            "fallbacks": counters.fallbacks,
            "retries": counters.retries,
        })

    async def post_stats(self, request: web.Request) -> web.Response:
        """``{"backends": [names]}``: those backends' counters (for more names than a
        query string holds)."""
        data = await _body(request)
        _only(data, {"backends"})
        names = data.get("backends")
        if not isinstance(names, list):
            raise BadRequest("backends must be a list of backend names")
        return self._some_stats(names, "backends[]")

    def _some_stats(self, names: list[Any], where: str) -> web.Response:
        """The counters of the named backends; a name the table does not have is left out."""
        backends = self.table.backends
        out: dict[str, Any] = {}
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{where} must be non-empty backend names, "
                                 f"got {name!r} at position {index}")
            backend = backends.get(name)
            if backend is not None:
                out[name] = backend.stats()
        return web.json_response({"backends": out, "latency_bounds": _LATENCY_BOUNDS})


_LATENCY_BOUNDS = [b if math.isfinite(b) else None for b in LATENCY_BUCKETS]


def _parse_routes(raw: Any) -> Routes:
    if not isinstance(raw, dict):
        raise BadRequest("routes must be an object or null")
    _only(raw, {"groups", "cohorts", "default", "group_header", "user_header"}, "routes")
    groups = raw.get("groups") or {}
    if not isinstance(groups, dict):
        raise BadRequest("routes.groups must be an object group -> pool")
    for group, pool in groups.items():
        if not group or not isinstance(pool, str) or not pool:
            raise BadRequest(f"routes.groups[{group!r}] must name a pool (non-empty string)")
    cohorts_raw = raw.get("cohorts") or []
    if not isinstance(cohorts_raw, list):
        raise BadRequest("routes.cohorts must be a list of {name, percent, pool}")
    cohorts = []
    for index, item in enumerate(cohorts_raw):
        where = f"routes.cohorts[{index}]."
        if not isinstance(item, dict):
            raise BadRequest(f"routes.cohorts[{index}] must be an object {{name, percent, pool}}")
        _only(item, {"name", "percent", "pool"}, f"routes.cohorts[{index}]")
        cohorts.append((_string(item, "name", where),
                        _percent(item.get("percent"), where + "percent"),
                        _string(item, "pool", where)))
    default = raw.get("default")
    if default is not None and (not isinstance(default, str) or not default):
        raise BadRequest("routes.default must be a pool name or null")
    headers = {}
    for key, fallback in (("group_header", "X-User-Group"), ("user_header", "X-User")):
        value = raw.get(key, fallback)
        if not isinstance(value, str) or not value or not value.isascii() or ":" in value:
            raise BadRequest(f"routes.{key} must be a header name")
        headers[key] = value
    return Routes(groups=dict(groups), cohorts=tuple(cohorts), default=default, **headers)


# --------------------------------------------------------------------------------------------
# Process


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def write_ready_file(path: str, data: Mapping[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(data), handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upgrader balancer serve",
        description="The built-in L7 load balancer: a reverse proxy with an admin API.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="where users connect (port 0: pick a free port)")
    parser.add_argument("--admin", required=True, metavar="HOST:PORT",
                        help="where the admin API listens (keep it on loopback)")
    parser.add_argument("--token-file", metavar="PATH",
                        help="file holding the admin bearer token (mode 0600); without it a "
                             "token is generated in "
                             f"{token_dir() / 'balancer-<admin port>.token'}")
    parser.add_argument("--ready-file", metavar="PATH",
                        help='written once listening: {"pid", "listen_port", "admin_port", '
                             '"token_file"}')
    parser.add_argument("--connect-timeout", type=float, default=3.0, metavar="S",
                        help="seconds to connect to a backend (default 3)")
    parser.add_argument("--backend-timeout", type=float, default=60.0, metavar="S",
                        help="seconds for a backend to answer in full (default 60)")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                        help="event loop: uvloop when importable (auto, the default; "
                             "uvloop is a dependency except on Windows), or asyncio's own")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


async def serve(listen_sock: socket.socket, admin_sock: socket.socket, token: str,
                ready_file: str | None, *, connect_timeout: float = 3.0,
                backend_timeout: float = 60.0, token_file: str | None = None) -> None:
    if not token:
        # main() always has one (given or generated); a library caller must not get around it
        raise PermissionError(f"refusing to serve the admin API on "
                              f"{admin_sock.getsockname()[0]} without a token")
    table = Table()
    proxy = ProxyServer(table, connect_timeout=connect_timeout, backend_timeout=backend_timeout)
    admin_app = web.Application(middlewares=[_auth_middleware(token)])
    admin_app.add_routes(Admin(table).routes())

    admin_runner = web.AppRunner(admin_app, access_log=None,
                                 shutdown_timeout=ADMIN_SHUTDOWN_SECONDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await admin_runner.setup()
        await proxy.start(listen_sock, backlog=1024)
        await web.SockSite(admin_runner, admin_sock).start()
        listen_port = listen_sock.getsockname()[1]
        admin_port = admin_sock.getsockname()[1]
        if ready_file:
            ready: dict[str, Any] = {"pid": os.getpid(), "listen_port": listen_port,
                                     "admin_port": admin_port}
            if token_file:
                ready["token_file"] = token_file
            await asyncio.to_thread(write_ready_file, ready_file, ready)
        log.info("balancer listening on port %d, admin on port %d (event loop: %s)",
                 listen_port, admin_port, type(loop).__module__.split(".")[0])
        await stop.wait()
        log.info("stopping: finishing requests in flight (at most %gs)", PROXY_SHUTDOWN_SECONDS)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await asyncio.gather(proxy.close(PROXY_SHUTDOWN_SECONDS), admin_runner.cleanup(),
                             return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s balancer %(levelname)s %(message)s")
    try:
        listen = parse_host_port(args.listen, "--listen")
        admin = parse_host_port(args.admin, "--admin")
    except ValueError as exc:
        print(f"upgrader balancer: {exc}", file=sys.stderr)
        return 2
    token = ""
    if args.token_file:
        try:
            token = read_token_file(args.token_file, key="--token-file")
        except ConfigError as exc:
            print(f"upgrader balancer: {exc}", file=sys.stderr)
            return 2
    try:
        listen_sock = _bind(*listen)
    except OSError as exc:
        print(f"upgrader balancer: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    try:
        admin_sock = _bind(*admin)
    except OSError as exc:
        listen_sock.close()
        print(f"upgrader balancer: cannot listen on {args.admin}: {exc}", file=sys.stderr)
        return 1
    try:
        loop_factory = event_loop_factory(args.loop)
    except ImportError as exc:
        listen_sock.close()
        admin_sock.close()
        print(f"upgrader balancer: --loop uvloop: {exc}", file=sys.stderr)
        return 2
    token_file = os.path.abspath(os.path.expanduser(args.token_file)) if token else None
    if not token:
        # no --token-file: a generated one, where a client on this machine finds it by port
        path = generated_token_path("balancer", admin_sock.getsockname()[1])
        try:
            token = ensure_generated_token(path)
        except (ConfigError, OSError) as exc:
            listen_sock.close()
            admin_sock.close()
            print(f"upgrader balancer: cannot write the generated admin token: {exc}",
                  file=sys.stderr)
            return 1
        token_file = str(path)
        print(f"upgrader balancer: no --token-file: the admin token is in {path} (mode 0600)",
              file=sys.stderr, flush=True)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(listen_sock, admin_sock, token, args.ready_file,
                         connect_timeout=args.connect_timeout,
                         backend_timeout=args.backend_timeout, token_file=token_file))
    return 0
