"""The ingest baseline: a Quart app with one no-op POST route, served by Hypercorn as `tidings`
serves (same config: no access log), run as its own process.

    python scripts/bench_noop.py --port 9100
    python scripts/bench_noop.py --port 9100 --processes 2   # as `tidings api --processes 2`

`POST /v1/events` reads the JSON body and answers 202 `{"id": "noop"}`; `GET /healthz` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request

from app.server import serve_in_processes


def build_app() -> Quart:
    """The no-op app."""
    app = Quart("noop")

    @app.post("/v1/events")
    async def accept() -> tuple[dict[str, Any], int]:
        await request.get_json()
        return {"id": "noop"}, 202

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.processes > 1:
        serve_in_processes(build_app, "127.0.0.1", args.port, args.processes, log_level="warning")
        return
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    asyncio.run(serve(build_app(), config))


if __name__ == "__main__":
    main()
