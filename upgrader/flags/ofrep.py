"""An OpenFeature Remote Evaluation Protocol (OFREP) server for the flags of one environment.

    POST /ofrep/v1/evaluate/flags/{key}   one flag   {"context": {"targetingKey": ..., ...}}
    POST /ofrep/v1/evaluate/flags         every flag, with ETag / If-None-Match (304)
    GET  /ofrep/v1/configuration          what this server supports (an OFREP extension)

Services in any language read flags through an OFREP provider. The server keeps a compiled
Evaluator current by polling the store (see ``FlagWatcher``); docs/FLAGS.md has the details.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..addresses import is_loopback, parse_host_port
from ..tokens import (
    bearer_token,
    ensure_generated_token,
    generated_token_path,
    new_token,
    token_matches,
    write_generated_token,
)
from .model import DEFAULT_LISTEN
from .watch import POLL_INTERVAL_S, FlagWatcher

log = logging.getLogger("upgrader.flags.ofrep")

PREFIX = "/ofrep/v1"
#: OpenFeature's resolution reasons; anything else is sent as UNKNOWN
REASONS = frozenset({"STATIC", "DEFAULT", "TARGETING_MATCH", "SPLIT", "CACHED", "DISABLED",
                     "UNKNOWN", "STALE", "ERROR"})
#: evaluation error code -> HTTP status (OFREP: 404 for a missing flag, 400 for the rest)
ERROR_STATUS = {"FLAG_NOT_FOUND": 404, "PARSE_ERROR": 400, "TARGETING_KEY_MISSING": 400,
                "INVALID_CONTEXT": 400, "TYPE_MISMATCH": 400, "GENERAL": 400}
MAX_BODY = 1024 * 1024


class OfrepServer:
    """Serves OFREP for one environment of a flag store.

    ``store`` is a store spec (a SQLite path or a ``postgresql://`` URL) or a store object.
    With a ``token``, every request must carry ``Authorization: Bearer <token>`` or
    ``X-API-Key: <token>``; without one the server only listens on loopback (an embedding
    program's choice: the process, ``serve`` and ``upgrader flags serve``, always has one).

        server = OfrepServer("flags.db", "production", port=0)
        await server.start()        # raises ConfigError if the flag set does not load
        ... server.port ...
        await server.aclose()
    """

    def __init__(self, store: Any, environment: str, *, host: str = "127.0.0.1",
                 port: int = 8500, token: str | None = None,
                 poll_interval: float = POLL_INTERVAL_S) -> None:
        if not token and not is_loopback(host):
            from ..errors import ConfigError

            raise ConfigError(f"refusing to serve flags on {host} without a token "
                              "(--token or --token-file): only loopback may go without",
                              key="--token")
        self.host = host
        self.port = port
        self.environment = environment
        self._token = token.encode() if token else None
        self.watcher = FlagWatcher(store, environment, interval=poll_interval, name="ofrep")
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def evaluator(self) -> Any:
        return self.watcher.evaluator

    async def start(self) -> None:
        await asyncio.to_thread(self.watcher.start)
        # no middleware without a token: it costs every request a little
        app = web.Application(client_max_size=MAX_BODY,
                              middlewares=[self._middleware] if self._token else [])
        app.router.add_post(PREFIX + "/evaluate/flags/{key}", self._single)
        app.router.add_post(PREFIX + "/evaluate/flags", self._bulk)
        app.router.add_get(PREFIX + "/configuration", self._configuration)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        sockets = getattr(site._server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(self.watcher.stop)

    async def __aenter__(self) -> OfrepServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------ handlers

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"errorDetails": "missing or wrong token: send "
                                      "'Authorization: Bearer <token>' or 'X-API-Key'"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        """``X-API-Key: T`` or ``Authorization: Bearer T`` (the scheme in any case), compared
        in constant time."""
        assert self._token is not None
        api_key = request.headers.get("X-API-Key")
        bearer = bearer_token(request.headers.get("Authorization"))
        # both compared, always: the time taken does not tell which header was right
        by_key = token_matches(api_key.strip() if api_key is not None else None, self._token)
        by_bearer = token_matches(bearer, self._token)
        return by_key or by_bearer

    async def _single(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        context, problem = await _read_context(request)
        if problem is not None:
            code, details = problem
            return _json(400, {"key": key, "errorCode": code, "errorDetails": details})
        evaluator = self.watcher.evaluator
        missing = _missing_targeting_key(evaluator, key, context)
        if missing is not None:
            return _json(400, missing)
        resolution = evaluator.evaluate(key, context)
        body = resolution_body(resolution)
        if "errorCode" in body:
            return _json(ERROR_STATUS.get(body["errorCode"], 400), body)
        return _json(200, body)

    async def _bulk(self, request: web.Request) -> web.Response:
        context, problem = await _read_context(request)
        if problem is not None:
            code, details = problem
            return _json(400, {"errorCode": code, "errorDetails": details})
        evaluator = self.watcher.evaluator
        etag = bulk_etag(evaluator, context)
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
        flags = []
        for key, resolution in _evaluate_all(evaluator, context):
            missing = _missing_targeting_key(evaluator, key, context)
            flags.append(missing if missing is not None else resolution_body(resolution))
        return _json(200, {"flags": flags, "metadata": {"environment": self.environment,
                                                        "version": str(evaluator.version)}},
                     etag=etag)

    async def _configuration(self, request: web.Request) -> web.Response:
        return _json(200, {
            "name": "upgrader",
            "capabilities": {
                "cacheInvalidation": {"polling": {"enabled": True,
                                                  "minPollingIntervalMs": 1000}},
                "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float",
                                                      "object"]},
            },
        })


# --------------------------------------------------------------------------------------------
# The protocol's bodies


def resolution_body(resolution: Any) -> dict[str, Any]:
    """An OFREP evaluation success or failure for one Resolution."""
    error_code = _name(resolution.error_code)
    if error_code:
        return {"key": resolution.key, "errorCode": error_code,
                "errorDetails": resolution.error_message or error_code}
    reason = _name(resolution.reason) or "UNKNOWN"
    metadata: dict[str, Any] = {}
    if resolution.rule is not None:
        metadata["rule"] = resolution.rule if isinstance(resolution.rule, (str, int, float)) \
            else str(resolution.rule)
    return {
        "key": resolution.key,
        "value": resolution.value,
        "reason": reason if reason in REASONS else "UNKNOWN",
        # always present: openfeature-provider-ofrep 0.3.0 reads it unconditionally
        "variant": "" if resolution.variant is None else str(resolution.variant),
        "metadata": metadata,
    }


def bulk_etag(evaluator: Any, context: Mapping[str, Any]) -> str:
    """The bulk answer depends on the flag set and the context: hash both."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.blake2b(f"{evaluator.etag}\0{canonical}".encode(), digest_size=12)
    return f'"{digest.hexdigest()}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _name(value: Any) -> str | None:
    """An enum member or a plain string -> its name/value as a string."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _json(status: int, body: dict[str, Any], etag: str | None = None) -> web.Response:
    # with an ETag a cache may keep the answer but must ask again (If-None-Match) each time
    headers = {"Cache-Control": "no-cache" if etag else "no-store"}
    if etag:
        headers["ETag"] = etag
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json", headers=headers)


async def _read_context(request: web.Request) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The request's evaluation context, or (errorCode, details) for a bad body."""
    raw = await request.read()
    if not raw.strip():
        return {}, None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return {}, ("PARSE_ERROR", f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return {}, ("PARSE_ERROR", "the body must be a JSON object like {\"context\": {...}}")
    context = data.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        return {}, ("INVALID_CONTEXT", "'context' must be a JSON object")
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        return {}, ("INVALID_CONTEXT", "'context.targetingKey' must be a string")
    return context, None


def _missing_targeting_key(evaluator: Any, key: str,
                           context: Mapping[str, Any]) -> dict[str, Any] | None:
    if context.get("targetingKey"):
        return None
    try:
        needs = evaluator.needs_targeting_key(key)
    except KeyError:
        return None      # an unknown flag: evaluate() answers FLAG_NOT_FOUND
    if not needs:
        return None
    return {"key": key, "errorCode": "TARGETING_KEY_MISSING",
            "errorDetails": f"flag {key!r} needs 'targetingKey' in the context "
                            "(it targets users or rolls out by percentage)"}


def _evaluate_all(evaluator: Any, context: Mapping[str, Any]) -> list[tuple[str, Any]]:
    results = evaluator.evaluate_all(context)
    if isinstance(results, Mapping):
        return list(results.items())
    return [(resolution.key, resolution) for resolution in results]




# --------------------------------------------------------------------------------------------
# `upgrader flags serve`


def serve(store_spec: str, env: str, listen: str = DEFAULT_LISTEN, token: str | None = None
          ) -> int:
    """Run the OFREP server until SIGINT/SIGTERM. Exit status: 0 stopped, 1 could not listen
    (or write the generated token), 2 bad input (bad --listen, a flag set that does not load).

    Without a ``token`` one is generated, 0600 in :func:`upgrader.tokens.generated_token_path`
    ("ofrep", port), and its path printed: there is no OFREP server without a token."""
    from ..errors import ConfigError

    generated = None
    given_token = bool(token)
    try:
        host, port = parse_host_port(listen, "--listen")
        if not token:
            if port:        # a fixed port: keep the token a previous run generated
                generated = generated_token_path("ofrep", port)
                token = ensure_generated_token(generated)
            else:           # port 0: the file is named once the port is known
                token = new_token()
        server = OfrepServer(store_spec, env, host=host, port=port, token=token)
    except (ValueError, ConfigError) as exc:
        print(f"upgrader flags serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"upgrader flags serve: cannot write the generated token: {exc}",
              file=sys.stderr)
        return 1

    async def main() -> int:
        try:
            await server.start()
        except ConfigError as exc:
            print(f"upgrader flags serve: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"upgrader flags serve: cannot listen on {listen}: {exc}", file=sys.stderr)
            return 1
        token_path = generated
        if token_path is None and not given_token:
            token_path = generated_token_path("ofrep", server.port)
            try:
                await asyncio.to_thread(write_generated_token, token_path, str(token))
            except (ConfigError, OSError) as exc:
                await server.aclose()
                print(f"upgrader flags serve: cannot write the generated token: {exc}",
                      file=sys.stderr)
                return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if token_path is not None:
            print(f"upgrader flags serve: no token given: the token is in {token_path} "
                  "(mode 0600)", file=sys.stderr, flush=True)
        print(f"upgrader flags serve: OFREP for environment {env!r} on {server.url}"
              f"{PREFIX}/evaluate/flags", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await server.aclose()
        return 0

    return asyncio.run(main())
