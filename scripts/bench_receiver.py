"""A fast webhook receiver for the benchmark, run as its own process.

    python scripts/bench_receiver.py --port 9001

`/ok/...` answers 200 at once; `/hang/...` holds the request for an hour (the sender's timeout
ends it first). Every webhook is recorded as (webhook-id, arrival time, path class) with the
receiver's wall clock, which the benchmark compares with its own (same machine).

Control routes: `GET /_stats` (counts and first/last arrival per class), `GET /_arrivals`
(`[[webhook_id, arrival], ...]` for `/ok`), `POST /_reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

HANG_SECONDS = 3600.0


@dataclass
class PathClass:
    """Arrivals of one path class (`ok` or `hang`)."""

    count: int = 0
    first: float | None = None
    last: float | None = None

    def add(self, moment: float) -> None:
        self.count += 1
        self.first = moment if self.first is None else self.first
        self.last = moment

    def as_json(self) -> dict[str, float | int | None]:
        return {"count": self.count, "first": self.first, "last": self.last}


@dataclass
class Arrivals:
    """What the receiver has seen since the last reset."""

    classes: dict[str, PathClass] = field(
        default_factory=lambda: {"ok": PathClass(), "hang": PathClass()}
    )
    webhooks: list[tuple[str, float]] = field(default_factory=list)


def build_app() -> web.Application:
    """The receiver's routes around one shared `Arrivals`."""
    arrivals = Arrivals()

    async def ok(request: web.Request) -> web.Response:
        moment = time.time()
        await request.read()
        arrivals.classes["ok"].add(moment)
        arrivals.webhooks.append((request.headers.get("webhook-id", ""), moment))
        return web.Response(text="ok")

    async def hang(request: web.Request) -> web.Response:
        arrivals.classes["hang"].add(time.time())
        await request.read()
        await asyncio.sleep(HANG_SECONDS)
        return web.Response(text="late")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({name: c.as_json() for name, c in arrivals.classes.items()})

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(arrivals.webhooks)

    async def reset(_: web.Request) -> web.Response:
        fresh = Arrivals()
        arrivals.classes, arrivals.webhooks = fresh.classes, fresh.webhooks
        return web.json_response({"reset": True})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", dump)
    app.router.add_post("/_reset", reset)
    app.router.add_route("*", "/ok/{tail:.*}", ok)
    app.router.add_route("*", "/hang/{tail:.*}", hang)
    return app


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        shutdown_timeout=0.2,  # `/hang` requests never finish: do not wait a minute for them
    )


if __name__ == "__main__":
    main()
