"""The client of the built-in balancer (``upgrader balancer serve``): the ``Balancer`` contract
over its JSON admin API. Registered as balancer ``builtin``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from ..addresses import is_loopback
from ..errors import BalancerError, ConfigError
from ..hookspecs import Register, hookimpl
from ..tokens import generated_token_path, read_token_file
from .base import (
    BackendState,
    BackendStats,
    Balancer,
    BalancerState,
    Cohort,
    ProviderContext,
    RouteTable,
    Setting,
)

SETTINGS: tuple[Setting, ...] = (
    Setting("admin_url", str, description="URL of the balancer's admin API, "
            "e.g. http://127.0.0.1:18001"),
    Setting("token", str, "", "the admin bearer token itself (prefer token_file or token_env)"),
    Setting("token_file", str, "", "a file holding the admin bearer token (mode 0600; by "
            "default the token a balancer on this machine generated for admin_url's port)"),
    Setting("token_env", str, "", "an environment variable holding the admin bearer token"),
    Setting("timeout", (int, float), 10.0, "seconds for one admin request"),
)

_TOKEN_KEYS = ("token", "token_file", "token_env")

#: ``backend_stats`` names up to this long a query string (GET); more go in a POST's body
MAX_QUERY_CHARS = 2000


class BuiltinBalancer:
    """Drives the built-in balancer through its admin API. One aiohttp session, created on
    first use and closed by :meth:`aclose` (or ``async with``)."""

    def __init__(self, admin_url: str, token: str, *, timeout: float = 10.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:   # never shows the token
        return f"BuiltinBalancer({self.admin_url!r})"

    async def __aenter__(self) -> BuiltinBalancer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def _call(self, method: str, path: str, body: Any = None, *,
                    params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                    timeout: float | None = None, conflict_ok: bool = False) -> Any:
        """The JSON answer; BalancerError for an HTTP error (``conflict_ok``: a 409's body is
        returned instead, for the fleet lock's "held by someone else")."""
        what = f"{method} {path}"
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if params:
            kwargs["params"] = params
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._get_session().request(method, self.admin_url + path,
                                                   **kwargs) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if resp.status == 409 and conflict_ok and isinstance(data, dict):
                    return data
                if resp.status >= 300:
                    error = data.get("error") if isinstance(data, dict) else None
                    raise BalancerError(
                        f"{what}: HTTP {resp.status}: {error or resp.reason or 'error'}")
                if data is None:
                    raise BalancerError(f"{what}: the balancer did not answer JSON")
                return data
        except TimeoutError as exc:
            raise BalancerError(f"{what}: no answer from the balancer in time") from exc
        except aiohttp.ClientError as exc:
            raise BalancerError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _name(name: str) -> str:
        return quote(name, safe="")

    # -- the Balancer contract

    async def state(self) -> BalancerState:
        data = await self._call("GET", "/admin/state")
        try:
            return _state_from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BalancerError(f"GET /admin/state: unexpected answer: {exc!r}") from exc

    async def set_backend(self, name: str, *, address: str, port: int, pool: str,
                          weight: int = 100, state: str = "ready") -> None:
        await self._call("PUT", f"/admin/backends/{self._name(name)}", {
            "address": address, "port": port, "pool": pool, "weight": weight, "state": state})

    async def remove_backend(self, name: str) -> None:
        await self._call("DELETE", f"/admin/backends/{self._name(name)}")

    async def set_backend_state(self, name: str, state: str, *, pool: str | None = None) -> None:
        body: dict[str, Any] = {"state": state}
        if pool is not None:
            body["pool"] = pool
        await self._call("POST", f"/admin/backends/{self._name(name)}/state", body)

    async def wait_drained(self, name: str, timeout: float) -> int:
        timeout = max(0.0, float(timeout))
        data = await self._call("GET", f"/admin/backends/{self._name(name)}/drained",
                                params={"timeout": f"{timeout:g}"},
                                timeout=timeout + self.timeout)
        try:
            return int(data["inflight"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BalancerError(f"GET /admin/backends/{name}/drained: unexpected answer: "
                                f"{exc!r}") from exc

    async def set_split(self, weights: Mapping[str, float] | None) -> None:
        await self._call("PUT", "/admin/split",
                         {"weights": None if weights is None else dict(weights)})

    async def set_routes(self, routes: RouteTable | None) -> None:
        await self._call("PUT", "/admin/routes",
                         {"routes": None if routes is None else _routes_to_json(routes)})

    async def set_maintenance(self, on: bool, retry_after: int = 60) -> None:
        await self._call("PUT", "/admin/maintenance", {"on": on, "retry_after": retry_after})

    async def stats(self) -> Mapping[str, BackendStats]:
        data = await self._call("GET", "/admin/stats")
        return _stats_from_json("GET /admin/stats", data, "backends")

    # -- the optional summaries (PoolStatsReader, BackendStatsReader)

    async def pool_stats(self) -> Mapping[str, BackendStats]:
        """Cumulative counters per pool, credited to the pool that served each request (a
        backend moved between pools does not carry its history along)."""
        data = await self._call("GET", "/admin/stats", params={"by": "pool"})
        return _stats_from_json("GET /admin/stats?by=pool", data, "pools")

    async def backend_stats(self, names: Iterable[str]) -> Mapping[str, BackendStats]:
        """The counters of the backends called ``names`` (a name the balancer does not have
        is left out): a GET for a few names, a POST of the list for many."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        if sum(len(quote(name, safe="")) + 9 for name in wanted) <= MAX_QUERY_CHARS:
            data = await self._call("GET", "/admin/stats",
                                    params=[("backend", name) for name in wanted])
            return _stats_from_json("GET /admin/stats?backend=", data, "backends")
        data = await self._call("POST", "/admin/stats", {"backends": wanted})
        return _stats_from_json("POST /admin/stats", data, "backends")

    # -- the fleet lock (FleetLockHolder): /admin/lock, atomic in the balancer process

    async def take_fleet_lock(self, holder: Mapping[str, Any],
                              replace: str | None = None) -> Mapping[str, Any] | None:
        data = await self._call("POST", "/admin/lock",
                                {"holder": dict(holder), "replace": replace}, conflict_ok=True)
        if data.get("taken"):
            return None
        return _lock_from_json("POST /admin/lock", data.get("lock"))

    async def renew_fleet_lock(self, holder: Mapping[str, Any]) -> bool:
        data = await self._call("PUT", "/admin/lock", {"holder": dict(holder)},
                                conflict_ok=True)
        return bool(data.get("renewed"))

    async def release_fleet_lock(self, lock_id: str | None) -> Mapping[str, Any] | None:
        data = await self._call("DELETE", "/admin/lock",
                                params={"id": lock_id} if lock_id is not None else None,
                                conflict_ok=True)
        released = data.get("released")
        return _lock_from_json("DELETE /admin/lock", released) if released else None

    async def read_fleet_lock(self) -> Mapping[str, Any] | None:
        data = await self._call("GET", "/admin/lock")
        return _lock_from_json("GET /admin/lock", data.get("lock"))


def _stats_from_json(what: str, data: Any, key: str) -> Mapping[str, BackendStats]:
    try:
        return {
            name: BackendStats(requests=int(item["requests"]), errors=int(item["errors"]),
                               latency_buckets=tuple(int(n) for n in item["latency_buckets"]))
            for name, item in data[key].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BalancerError(f"{what}: unexpected answer: {exc!r}") from exc


def _lock_from_json(what: str, lock: Any) -> Mapping[str, Any] | None:
    if lock is None:
        return None
    if not isinstance(lock, dict) or not isinstance(lock.get("id"), str):
        raise BalancerError(f"{what}: unexpected answer: lock {lock!r}")
    return lock


def _routes_to_json(routes: RouteTable) -> dict[str, Any]:
    return {
        "groups": dict(routes.groups),
        "cohorts": [{"name": cohort.name, "percent": cohort.percent, "pool": pool}
                    for cohort, pool in routes.cohorts],
        "default": routes.default,
        "group_header": routes.group_header,
        "user_header": routes.user_header,
    }


def _state_from_json(data: Mapping[str, Any]) -> BalancerState:
    backends = {
        name: BackendState(name=name, address=item["address"], port=int(item["port"]),
                           pool=item["pool"], weight=int(item["weight"]), state=item["state"],
                           inflight=int(item.get("inflight", 0)))
        for name, item in data["backends"].items()
    }
    split = data.get("split")
    raw_routes = data.get("routes")
    routes = None
    if raw_routes is not None:
        routes = RouteTable(
            groups=dict(raw_routes.get("groups") or {}),
            cohorts=tuple((Cohort(c["name"], float(c["percent"])), c["pool"])
                          for c in raw_routes.get("cohorts") or ()),
            default=raw_routes.get("default"),
            group_header=raw_routes.get("group_header", "X-User-Group"),
            user_header=raw_routes.get("user_header", "X-User"),
        )
    return BalancerState(
        backends=backends,
        split={pool: float(w) for pool, w in split.items()} if split is not None else None,
        routes=routes,
        maintenance=bool(data.get("maintenance", False)),
        retry_after=int(data.get("retry_after", 0)),
    )


# --------------------------------------------------------------------------------------------
# Factory and registration


def resolve_token(settings: Mapping[str, Any]) -> str:
    """The token from exactly one of ``token``, ``token_file``, ``token_env``; with none of
    them and a loopback ``admin_url``, the token a balancer started without ``--token-file``
    generated for that port (:func:`upgrader.tokens.generated_token_path`)."""
    given = [key for key in _TOKEN_KEYS if settings.get(key)]
    if not given:
        generated = _generated_token_file(settings.get("admin_url"))
        if generated is not None and generated.exists():
            return read_token_file(generated, key="token_file")
        where = f" (none was generated at {generated})" if generated is not None else ""
        raise ConfigError("the built-in balancer needs an admin token: set one of "
                          f"token_file, token_env or token{where}", key="token_file")
    if len(given) > 1:
        raise ConfigError(f"set only one of {', '.join(given)}", key=given[1])
    key = given[0]
    value = settings[key]
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {type(value).__name__}", key=key)
    if key == "token":
        token = value.strip()
    elif key == "token_file":
        # the same rules as the balancer: a file others may read is refused (chmod 600)
        token = read_token_file(value, key=key)
    else:
        token = os.environ.get(value, "").strip()
        if not token:
            raise ConfigError(f"environment variable {value!r} is unset or empty", key=key)
    if not token:
        raise ConfigError("the admin token is empty", key=key)
    return token


def _generated_token_file(admin_url: Any) -> Path | None:
    """Where a balancer on this machine put its generated token, for a loopback admin URL
    (never for another machine's: that file is not that balancer's token)."""
    if not isinstance(admin_url, str):
        return None
    try:
        parts = urlsplit(admin_url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if host is None or port is None or not is_loopback(host):
        return None
    return generated_token_path("balancer", port)


def from_settings(settings: Mapping[str, Any], context: ProviderContext) -> BuiltinBalancer:
    known = {setting.name for setting in SETTINGS}
    for key in settings:
        if key not in known:
            raise ConfigError(f"unknown setting (known: {', '.join(sorted(known))})", key=key)
    admin_url = settings.get("admin_url")
    if not isinstance(admin_url, str) or not admin_url:
        raise ConfigError("required: the URL of the balancer's admin API", key="admin_url")
    parts = urlsplit(admin_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"must be an http:// or https:// URL, got {admin_url!r}",
                          key="admin_url")
    timeout = settings.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"must be a positive number of seconds, got {timeout!r}",
                          key="timeout")
    return BuiltinBalancer(admin_url, resolve_token(settings), timeout=float(timeout))


@hookimpl
def register_balancers(register: Register[Balancer]) -> None:
    register("builtin", from_settings, settings=SETTINGS,
             description="the built-in L7 balancer (upgrader balancer serve), "
                         "through its admin API")
