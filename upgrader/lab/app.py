"""The lab's service: a tiny aiohttp app that serves the release its slot's ``current`` link
points to, and misbehaves on purpose when the release name asks for it (see ``variant_of``).

Run as ``python -m upgrader.lab.app --root ROOT --slot SLOT --port PORT --host NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

#: release-name suffix -> variant. Anything else is "good".
VARIANT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("-bad", "errors"),
    ("-errors", "errors"),
    ("-unhealthy", "unhealthy"),
    ("-crash", "crash"),
    ("-slow", "slow"),
)
VARIANTS = ("good", "errors", "unhealthy", "crash", "slow")
DEFAULT_CRASH_AFTER = 3.0
DEFAULT_SLOW_LATENCY = 0.3
#: exit status of a "-crash" release when it falls over
CRASH_EXIT_STATUS = 3
#: how long a SIGTERM waits for in-flight requests before closing them
SHUTDOWN_TIMEOUT = 8.0


def variant_of(release: str) -> str:
    """The behaviour a release name asks for: good, errors, unhealthy, crash or slow."""
    for suffix, variant in VARIANT_SUFFIXES:
        if release.endswith(suffix):
            return variant
    return "good"


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def slot_current_link(root: Path, slot: str) -> Path:
    """Slot ``default`` (or empty) uses ``ROOT/current``; slot S uses ``ROOT/slots/S/current``."""
    if not slot or slot == "default":
        return root / "current"
    return root / "slots" / slot / "current"


def read_release(root: Path, slot: str) -> dict:
    """The ``release.json`` of the release the slot's ``current`` link points to."""
    link = slot_current_link(root, slot)
    try:
        data = json.loads((link / "release.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"no release installed for slot {slot!r}: {link} is missing") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {link / 'release.json'}: {exc}") from None
    version = str(data.get("version") or Path(os.path.realpath(link)).name)
    return {"version": version, "variant": data.get("variant") or variant_of(version)}


def make_app(*, host: str, slot: str, version: str, variant: str):
    # imported here, not at module level: hostctl imports this module and must start fast
    import asyncio

    from aiohttp import web

    headers = {"X-Version": version}
    counter = 0
    if variant == "slow":
        slow = _env_seconds("UPGRADER_LAB_SLOW_LATENCY", DEFAULT_SLOW_LATENCY)
        latency = (slow, slow)
    else:
        latency = (0.002, 0.005)

    async def healthz(request: web.Request) -> web.Response:
        if variant == "unhealthy":
            return web.json_response({"status": "unhealthy", "version": version},
                                     status=503, headers=headers)
        return web.json_response({"status": "ok", "version": version, "host": host,
                                  "slot": slot}, headers=headers)

    async def serve(request: web.Request) -> web.Response:
        nonlocal counter
        n = counter
        counter += 1
        await asyncio.sleep(random.uniform(*latency))
        if variant == "errors" and n % 10 < 3:
            return web.json_response({"error": "simulated failure", "host": host,
                                      "version": version}, status=500, headers=headers)
        return web.json_response({"host": host, "version": version, "slot": slot,
                                  "path": request.path}, headers=headers)

    app = web.Application()
    app.router.add_route("GET", "/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.lab.app", description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--slot", default="default")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="web")
    args = parser.parse_args(argv)
    slot = args.slot or "default"

    release = read_release(args.root, slot)
    version, variant = release["version"], release["variant"]

    import asyncio

    from aiohttp import web

    app = make_app(host=args.host, slot=slot, version=version, variant=variant)

    if variant == "crash":
        crash_after = _env_seconds("UPGRADER_LAB_CRASH_AFTER", DEFAULT_CRASH_AFTER)

        async def schedule_crash(_app: web.Application) -> None:
            def crash() -> None:
                print(f"{args.host}/{slot}: release {version} crashes now (simulated)",
                      file=sys.stderr, flush=True)
                os._exit(CRASH_EXIT_STATUS)

            asyncio.get_running_loop().call_later(crash_after, crash)

        app.on_startup.append(schedule_crash)

    print(f"{args.host}/{slot}: serving {version} ({variant}) on 127.0.0.1:{args.port}",
          file=sys.stderr, flush=True)
    # run_app turns SIGTERM into a graceful stop: close the listener, let in-flight requests
    # finish (up to shutdown_timeout), then exit 0.
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                shutdown_timeout=SHUTDOWN_TIMEOUT, handle_signals=True)
    print(f"{args.host}/{slot}: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
