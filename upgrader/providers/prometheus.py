"""The ``prometheus`` metric source: PromQL instant and range queries over Prometheus's HTTP
API (``/api/v1/query``, ``/api/v1/query_range``), one per side of an analysis window.

A query is a template of ``{host}`` (the side's host names as a regex alternation, for
``=~``), ``{release}``, ``{pool}`` and ``{interval}`` (the window's length as a PromQL
duration, ``30s``). Every series of the answer gives samples; a ``proportion`` metric with
two queries (events, trials) gives counts (docs/ANALYSIS.md, "Metric sources").
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, MetricSourceError
from ..hookspecs import Register, hookimpl
from ..redact import redact_url
from .base import MetricSamples, MetricSource, MetricWindow, ProviderContext, Setting
from .metrics_templates import SIDES, check_placeholders, render

if TYPE_CHECKING:
    import aiohttp

SETTINGS: tuple[Setting, ...] = (
    Setting("url", str, "http://127.0.0.1:9090", "the Prometheus server's base URL"),
    Setting("timeout", float, 5.0, "seconds per query (the whole HTTP request)"),
    Setting("step", (float, int), 0.0, "0: one instant query at the window's end; > 0: a range "
            "query over the window with this step in seconds, every point a sample"),
    Setting("headers", dict, {}, "extra request headers (e.g. Authorization)"),
)

#: how much of an unreadable answer an error quotes
_BODY_TAIL = 300


def promql_hosts(names: Iterable[str]) -> str:
    """Host names as one regex alternation for a ``=~`` matcher (``a|b``), each escaped; a
    side without hosts matches nothing."""
    escaped = [re.escape(name).replace("\\", "\\\\") for name in names]
    return "|".join(escaped) if escaped else "^$"


def promql_duration(seconds: float) -> str:
    """A window's length as a PromQL duration, whole seconds rounded up, at least ``1s``."""
    return f"{max(1, math.ceil(seconds - 1e-9))}s"


def _queries(metric: Any) -> tuple[str, ...]:
    query = metric.query
    return (query,) if isinstance(query, str) else tuple(query)


class PrometheusSource:
    """Reads one ``[[verify.metrics]]`` table's PromQL from one Prometheus server."""

    def __init__(self, url: str, *, timeout: float = 5.0, step: float = 0.0,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.step = float(step)
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      context: ProviderContext) -> PrometheusSource:
        return cls(settings["url"], timeout=float(settings["timeout"]),
                   step=float(settings["step"]), headers=settings["headers"])

    # -----------------------------------------------------------------------------------
    # check

    def check(self, metric: Any) -> None:
        name = metric.name
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"metric {name}: prometheus url must start with http:// or "
                              f"https://, not {redact_url(self.url)!r}",
                              key="verify.metrics.url")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"metric {name}: prometheus timeout must be a positive number "
                              f"of seconds, not {self.timeout}", key="verify.metrics.timeout")
        if self.step < 0 or not math.isfinite(self.step):
            raise ConfigError(f"metric {name}: prometheus step must be 0 (instant query) or "
                              f"a positive number of seconds, not {self.step}",
                              key="verify.metrics.step")
        queries = _queries(metric)
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ConfigError(f"metric {name}: the prometheus source needs a PromQL query",
                              key="verify.metrics.query")
        if len(queries) == 2 and metric.kind != "proportion":
            raise ConfigError(f"metric {name}: two queries (events, trials) are for kind = "
                              f"\"proportion\"; a {metric.kind} metric has one query",
                              key="verify.metrics.query")
        if len(queries) > 2:
            raise ConfigError(f"metric {name}: a prometheus metric has one query (or two for a "
                              f"proportion: events, trials), not {len(queries)}",
                              key="verify.metrics.query")
        if len(queries) == 2 and self.step:
            raise ConfigError(f"metric {name}: events and trials are counted with instant "
                              f"queries (increase(...[{{interval}}])); drop step",
                              key="verify.metrics.step")
        for query in queries:
            check_placeholders(name, query, "prometheus")

    # -----------------------------------------------------------------------------------
    # collect

    async def collect(self, metric: Any, window: MetricWindow) -> MetricSamples:
        queries = _queries(metric)
        interval = promql_duration(window.end - window.start)
        results = await asyncio.gather(*(
            self._side(queries, window, side, interval) for side in SIDES))
        (canary, canary_counts), (baseline, baseline_counts) = results
        return MetricSamples(
            canary=canary, baseline=baseline, canary_counts=canary_counts,
            baseline_counts=baseline_counts,
            detail=f"{' / '.join(queries)} from {redact_url(self.url)}")

    async def _side(self, queries: tuple[str, ...], window: MetricWindow, side: str,
                    interval: str) -> tuple[tuple[float, ...], tuple[int, int] | None]:
        hosts = window.canary if side == "canary" else window.baseline
        if not hosts:
            return (), None
        rendered = [render(q, window, side, hosts=promql_hosts, interval=interval)
                    for q in queries]
        if len(rendered) == 1:
            return tuple(await self.query(rendered[0], window)), None
        events_values, trials_values = await asyncio.gather(
            self.query(rendered[0], window), self.query(rendered[1], window))
        if not trials_values:
            return (), None
        events, trials = round(sum(events_values)), round(sum(trials_values))
        if trials <= 0:
            return (), None
        return (events / trials,), (max(0, min(events, trials)), trials)

    async def query(self, promql: str, window: MetricWindow) -> list[float]:
        """The finite values of every series ``promql`` answers: at ``window.end`` (instant)
        or over the window (range, with ``step``). NaN and infinities (0/0) are no data."""
        if self.step:
            path = "/api/v1/query_range"
            form = {"query": promql, "start": f"{window.start:.3f}",
                    "end": f"{window.end:.3f}", "step": f"{self.step:g}"}
        else:
            path = "/api/v1/query"
            form = {"query": promql, "time": f"{window.end:.3f}"}
        data = await self._post(path, form, promql)
        return [v for v in _values(data, promql, self.url) if math.isfinite(v)]

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self.headers)
        return self._session

    async def _post(self, path: str, form: Mapping[str, str], promql: str) -> Any:
        import aiohttp

        url = redact_url(self.url)
        try:
            async with self._get_session().post(self.url + path, data=form) as response:
                body = await response.text()
                status, reason = response.status, response.reason
        except TimeoutError as exc:
            raise MetricSourceError(
                f"prometheus at {url}: no answer within {self.timeout:g}s to {promql!r}") from exc
        except aiohttp.ClientError as exc:
            raise MetricSourceError(
                f"prometheus at {url} unreachable: {exc or type(exc).__name__}") from exc
        try:
            answer = _json(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("status") == "error":
            raise MetricSourceError(
                f"prometheus at {url} refused the query {promql!r}: "
                f"{answer.get('errorType', 'error')}: {answer.get('error', '')}")
        if status != 200:
            raise MetricSourceError(f"prometheus at {url}: HTTP {status} {reason or ''} for "
                                    f"{path}: {body[-_BODY_TAIL:].strip()!r}")
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise MetricSourceError(f"prometheus at {url}: an unreadable answer to {path}: "
                                    f"{body[-_BODY_TAIL:].strip()!r}")
        return answer.get("data")

    async def aclose(self) -> None:
        if self._session is not None:
            try:
                await self._session.close()
            except Exception:  # aclose raises nothing
                pass
            self._session = None


def _json(body: str) -> Any:
    import json

    return json.loads(body)


def _values(data: Any, promql: str, url: str) -> list[float]:
    """The values of a ``data`` object of the query API: ``vector`` (one per series),
    ``matrix`` (every point of every series) or ``scalar``."""
    try:
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [float(series["value"][1]) for series in result]
        if kind == "matrix":
            return [float(point[1]) for series in result for point in series["values"]]
        if kind == "scalar":
            return [float(result[1])]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricSourceError(f"prometheus at {redact_url(url)}: an unreadable result for "
                                f"{promql!r}: {type(exc).__name__}: {exc}") from exc
    raise MetricSourceError(f"prometheus at {redact_url(url)}: {promql!r} gives a {kind} "
                            f"result, not numbers (vector, matrix or scalar)")


@hookimpl
def register_metric_sources(register: Register[MetricSource]) -> None:
    register("prometheus", PrometheusSource.from_settings, settings=SETTINGS,
             description="PromQL instant or range queries over Prometheus's HTTP API")
