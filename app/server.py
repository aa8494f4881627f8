"""Serving HTTP on Hypercorn: in this process, or in several processes on one port.

`tidings api --processes N` runs N API processes, each with its own event loop, app and
database pool, each listening on the same address with SO_REUSEPORT, so the kernel spreads
new connections over them and the API can use every core; `tidings serve --processes N` (on
PostgreSQL) runs N processes that each deliver too, as N `tidings worker` would. What each
process keeps to itself: the API key cache (a revoked key stops working within
`KEY_CACHE_SECONDS` in every process), the per-key rate limit (a key may make up to N times
`TIDINGS_API_RATE_LIMIT` requests a second), and its commit rounds; everything else is in the
database, except the delivery counters, which the processes keep in files of one directory
(PROMETHEUS_MULTIPROC_DIR; a temporary one unless it is set) so that `/metrics` sums them.

The process that started them supervises: on SIGINT or SIGTERM it tells them all to stop and
waits for their requests in flight; when one of them ends by itself it stops the others and
exits 1, for the process manager (systemd, Kubernetes) to restart the whole command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event, Semaphore
from types import FrameType
from typing import TYPE_CHECKING

from app import __version__
from app.config import Settings
from app.factory import create_app
from app.processes import (
    allow_open_files,
    configure_logging,
    tune_garbage_collector,
    wait_for_shutdown_signal,
)

if TYPE_CHECKING:
    from hypercorn.config import Config
    from quart import Quart

    AppFactory = Callable[[], Quart]

log = logging.getLogger("tidings")

GRACEFUL_SECONDS = 10  # for the requests in flight when a server is told to stop
LISTEN_BACKLOG = 100  # connections the kernel holds for a process until it accepts them
SUPERVISOR_TICK = 0.2  # seconds between the supervisor's and each serving process's checks


class ServerError(Exception):
    """The server cannot start (the message says why, in one line)."""


def serve_http(
    settings: Settings, host: str, port: int, *, with_worker: bool, processes: int = 1
) -> int:
    """Serve until told to stop (`with_worker`: deliver too); the exit status. Several
    processes that deliver need PostgreSQL, whose claims and wake-ups span processes."""
    if processes > 1 and with_worker and settings.is_sqlite:
        raise ServerError(
            "several `tidings serve` processes need PostgreSQL (TIDINGS_DATABASE_URL): on "
            "SQLite one process delivers"
        )
    if with_worker:
        allow_open_files(settings.worker_concurrency)  # serving processes inherit the limit
    if processes > 1:
        build = functools.partial(create_app, settings, run_worker=with_worker)
        return serve_in_processes(build, host, port, processes, log_level=settings.log_level)
    from hypercorn.asyncio import serve

    app = create_app(settings, run_worker=with_worker)
    config = _hypercorn_config(f"{host}:{port}")
    log.info("tidings %s listening on http://%s:%s", __version__, host, port)
    tune_garbage_collector()
    asyncio.run(serve(app, config, shutdown_trigger=wait_for_shutdown_signal))
    return 0


def _hypercorn_config(bind: str) -> Config:
    from hypercorn.config import Config

    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.graceful_timeout = GRACEFUL_SECONDS
    config.backlog = LISTEN_BACKLOG
    return config


def _shared_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that other processes of this user may bind too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return sock


def serve_in_processes(
    build_app: AppFactory, host: str, port: int, count: int, *, log_level: str = "info"
) -> int:
    """`count` processes, each serving the app `build_app` makes (it must pickle: a module's
    function, or a `functools.partial` of one) on (host, port), until SIGINT or SIGTERM or
    until one ends by itself; the exit status (1 for the latter)."""
    # Bound here first: a port in use fails in one clear line, and port 0 becomes one port
    # for all. Bound but not listening, this socket is never handed a connection.
    reserved = _shared_port_socket(host, port)
    port = reserved.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    stop, ready = context.Event(), context.Semaphore(0)
    children = [
        context.Process(
            target=_serving_process,
            args=(build_app, log_level, host, port, stop, ready),
            name=f"tidings-{number}",
        )
        for number in range(1, count + 1)
    ]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with _shared_metrics_directory():  # a spawned child takes os.environ as it is
        return _supervise(children, stop, ready, reserved, host, port)


def _supervise(
    children: Sequence[BaseProcess],
    stop: Event,
    ready: Semaphore,
    reserved: socket.socket,
    host: str,
    port: int,
) -> int:
    """Start the children and watch them until a stop or until one ends; the exit status."""
    try:
        for child in children:
            child.start()
        if _all_ready(children, ready, stop.is_set):
            log.info(
                "tidings %s listening on http://%s:%s (%d processes)",
                __version__,
                host,
                port,
                len(children),
            )
        while not stop.is_set() and all(child.is_alive() for child in children):
            wait([child.sentinel for child in children], timeout=SUPERVISOR_TICK)
        told_to_stop = stop.is_set()
        if not told_to_stop:
            ended = next(child for child in children if not child.is_alive())
            log.error(
                "process %s ended (exit code %s): stopping the others",
                ended.pid,
                ended.exitcode,
            )
        return 0 if told_to_stop else 1
    finally:
        stop.set()
        _join(children)
        reserved.close()


@contextlib.contextmanager
def _shared_metrics_directory() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the processes spawned meanwhile: as it is if it is set
    (the operator's to empty between runs, as prometheus_client asks), else a new directory,
    removed at the end."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="tidings-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _all_ready(
    children: Sequence[BaseProcess], ready: Semaphore, stopping: Callable[[], bool]
) -> bool:
    """Until every child has started serving (True), or one ended or a stop came (False)."""
    started = 0
    while started < len(children):
        if ready.acquire(timeout=SUPERVISOR_TICK):
            started += 1
        elif stopping() or not all(child.is_alive() for child in children):
            return False
    return True


def _join(children: Sequence[BaseProcess]) -> None:
    """Each child, once it has finished its requests in flight; killed if it takes too long."""
    for child in children:
        if child.pid is not None:
            child.join(GRACEFUL_SECONDS + 5)
    for child in children:
        if child.is_alive():
            log.warning("process %s did not stop in time: killed", child.pid)
            child.kill()
            child.join()


def _serving_process(
    build_app: AppFactory, log_level: str, host: str, port: int, stop: Event, ready: Semaphore
) -> None:
    """One serving process (the target of a spawned child): serves until `stop` is set, SIGINT or
    SIGTERM arrives, or the supervisor is gone."""
    from hypercorn.asyncio import serve

    configure_logging(log_level)
    app = build_app()

    @app.before_serving
    async def announce_ready() -> None:
        ready.release()

    # Listening before the app starts: a connection that comes meanwhile waits in the backlog.
    sock = _shared_port_socket(host, port)
    sock.listen(LISTEN_BACKLOG)
    config = _hypercorn_config(f"fd://{sock.detach()}")
    tune_garbage_collector()
    asyncio.run(serve(app, config, shutdown_trigger=lambda: _until_stopped(stop)))


async def _until_stopped(stop: Event) -> None:
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    supervisor = multiprocessing.parent_process()
    while not (signalled.is_set() or stop.is_set()):
        if supervisor is not None and not supervisor.is_alive():
            log.warning("the supervising process is gone: stopping")
            return
        await asyncio.sleep(SUPERVISOR_TICK)
