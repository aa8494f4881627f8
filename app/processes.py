"""What every long-running `tidings` process sets up: logging, the garbage collector, the
limit on open files, and how it hears that it should stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal

log = logging.getLogger("tidings")


def configure_logging(level: str) -> None:
    """One line per record, at `level` (a setting), without the scheduler's chatter."""
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default: 700)
# `tidings worker` alone: the state of hundreds of attempts in flight lives in the young
# generation, and at 10,000 each young collection walked it again (about 6 ms, 115 times in a
# 30,000-delivery drain: 7 % of the worker's CPU). At 50,000 the young generation is collected
# about once in such a drain, and peak RSS is unchanged (135 MB). The API kept 10,000: in two
# pairs, 50,000 was slower for events and Bundles.
WORKER_GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Keep what start-up built (modules, the app, the catalog) out of the garbage collector's
    full passes, which then scan only what the running process made since, and collect the
    young generation less often (every `young_threshold` allocations). Measured: under 500
    events/s, a full pass every 1-2 s stopped `serve` for 50-60 ms; a Bundle of 500 changes
    spent 14 % of its time collecting."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


# Besides the sender's sockets: database connections, the listening socket, logs, imports.
OTHER_OPEN_FILES = 256


def allow_open_files(worker_concurrency: int) -> None:
    """Raise the soft limit on open files to what a worker needs, as far as the hard limit
    allows: up to `worker_concurrency` connections in flight and as many idle (the sender's
    pool) besides the others. A common soft limit of 1,024 would otherwise turn a busy
    worker's new connections into `connect` errors. Warns when the hard limit is lower."""
    needed = 2 * worker_concurrency + OTHER_OPEN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        log.warning(
            "open files are limited to %d (hard limit); TIDINGS_WORKER_CONCURRENCY=%d may need "
            "%d: raise the limit (ulimit -n) or lower the concurrency",
            wanted,
            worker_concurrency,
            needed,
        )


async def wait_for_shutdown_signal() -> None:
    """Until SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
