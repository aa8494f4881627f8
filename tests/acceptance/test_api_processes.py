"""`tidings api --processes N`: N API processes on one port under one supervisor. The kernel
spreads connections over them, an idempotency key holds across them, and nothing is stored
twice or lost; SIGTERM stops them all; one that dies takes the others down with exit status 1;
a port in use, or a bad count, is one clear line. `tidings serve --processes N` on PostgreSQL
delivers every event once, and `/metrics` counts the attempts of all its processes; on SQLite
it is refused."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Tidings, free_port, stop
from tests.acceptance.test_delivery import eventually
from tests.receivers import receiver_in_thread

pytestmark = pytest.mark.acceptance

KEYS = 12  # idempotency keys, each published by two clients at once
FLOW = {
    "id": "flow_1",
    "patient": "Patient/p1",
    "status": "completed",
    "completed_at": "2025-06-01T12:00:00Z",
}


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_api_processes_share_the_port_and_store_each_event_once(
    tidings: Tidings, database: str, request: pytest.FixtureRequest
) -> None:
    if database == "postgres":
        tidings.env["TIDINGS_DATABASE_URL"] = request.getfixturevalue("empty_postgres_url")
    tidings.run("migrate")
    source, partner = tidings.key("acme", "source"), tidings.key("acme")
    api, base = tidings.start("api", "--processes", "2")
    try:
        children = _api_children(api.pid, 2, port=int(base.rsplit(":", 1)[1]))
        idle = {pid: _sockets(pid) for pid in children}
        clients = [
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {source}"})
            for _ in range(2 * KEYS)
        ]
        together = threading.Barrier(len(clients))

        def publish(number: int) -> tuple[str, int, str]:
            clients[number].get("/healthz").raise_for_status()  # its connection is open
            together.wait(timeout=30)
            key = f"k{number % KEYS}"
            body = {"type": "patient_flow.completed", "idempotency_key": key, "data": FLOW}
            response = clients[number].post("/v1/events", json=body)
            return key, response.status_code, response.json()["id"]

        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(pool.map(publish, range(len(clients))))
        busy = {pid: _sockets(pid) for pid in children}
        for client in clients:
            client.close()
        listed = httpx.get(
            base + "/v1/events?limit=100", headers={"Authorization": f"Bearer {partner}"}
        )
    finally:
        output = stop(api)
    assert api.returncode == 0, output
    assert "Traceback" not in output, output
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "a process outlived stop"
    # 24 connections, spread by the kernel: each process holds some (all on one: p = 2^-23).
    assert all(busy[pid] > idle[pid] for pid in children), (idle, busy)
    assert sorted(Counter(status for _, status, _ in answers).items()) == [(200, KEYS), (202, KEYS)]
    ids_by_key: dict[str, set[str]] = {}
    for key, _, event_id in answers:
        ids_by_key.setdefault(key, set()).add(event_id)
    assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    stored = [event["id"] for event in listed.json()["data"]]
    assert sorted(stored) == sorted(ids.pop() for ids in ids_by_key.values())


def test_an_api_process_that_dies_stops_the_others_with_status_1(tidings: Tidings) -> None:
    api, base = tidings.start("api", "--processes", "2")
    try:
        first, second = _api_children(api.pid, 2, port=int(base.rsplit(":", 1)[1]))
        os.kill(first, signal.SIGKILL)
        api.wait(timeout=30)
    finally:
        output = stop(api)
    assert api.returncode == 1, output
    assert f"process {first} ended (exit code -9): stopping the others" in output
    assert not Path(f"/proc/{second}").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/healthz", timeout=2)


def test_a_port_in_use_and_a_bad_count_are_one_line_each(tidings: Tidings) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        busy = tidings.run("api", "--processes", "2", "--port", str(port), check=False)
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1] == (
        f"tidings: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    for bad in ("0", "65", "two"):
        refused = tidings.run("api", "--processes", bad, check=False)
        assert refused.returncode == 2
        assert f"{bad!r} is not a whole number of processes from 1 to 64" in refused.stderr


@pytest.mark.postgres
def test_serve_processes_on_postgres_deliver_each_event_once(
    tidings: Tidings, empty_postgres_url: str, tmp_path: Path
) -> None:
    tidings.env["TIDINGS_DATABASE_URL"] = empty_postgres_url
    tidings.env["TMPDIR"] = str(tmp_path)  # where the processes' shared metrics directory goes
    tidings.run("migrate")
    partner, source = tidings.key("acme"), tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        serve, base = tidings.start("serve", "--processes", "2")
        try:
            _api_children(serve.pid, 2, port=int(base.rsplit(":", 1)[1]))
            httpx.post(
                base + "/v1/endpoints",
                headers={"Authorization": f"Bearer {partner}"},
                json={"url": receiver.url("/hook")},
            ).raise_for_status()
            clients = [
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {source}"})
                for _ in range(12)
            ]

            def publish(number: int) -> str:
                body = {"type": "patient_flow.completed", "data": FLOW}
                response = clients[number % len(clients)].post("/v1/events", json=body)
                response.raise_for_status()
                return str(response.json()["id"])

            with ThreadPoolExecutor(len(clients)) as pool:
                ids = list(pool.map(publish, range(60)))
            for client in clients:
                client.close()
            eventually(lambda: len(receiver.at("/hook")) >= len(ids), seconds=60)
            time.sleep(0.5)  # a second delivery of any of them would arrive meanwhile
            # Each scrape on a new connection, answered by either process, counts them all.
            scraped = [_succeeded_attempts(httpx.get(base + "/metrics").text) for _ in range(8)]
            shared = list(tmp_path.glob("tidings-metrics-*"))
        finally:
            output = stop(serve)
    assert serve.returncode == 0, output
    assert "Traceback" not in output, output
    seen = Counter(item.headers["webhook-id"] for item in receiver.at("/hook"))
    assert sorted(seen) == sorted(ids)
    assert set(seen.values()) == {1}, "an event was delivered twice"
    assert scraped == [60.0] * 8
    assert len(shared) == 1
    assert not shared[0].exists(), "the metrics directory was left behind"


def _succeeded_attempts(exposition: str) -> float:
    """tidings_delivery_attempts_total{verdict="succeeded"} in a /metrics body (0 if absent)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "tidings_delivery_attempts_total" and sample.labels == {
                "verdict": "succeeded"
            }:
                return sample.value
    return 0.0


def test_several_serve_processes_on_sqlite_are_refused_in_one_line(tidings: Tidings) -> None:
    refused = tidings.run("serve", "--processes", "2", "--port", str(free_port()), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "tidings: several `tidings serve` processes need PostgreSQL (TIDINGS_DATABASE_URL): "
        "on SQLite one process delivers"
    )


def _api_children(supervisor: int, count: int, port: int, seconds: float = 30) -> list[int]:
    """The supervisor's API processes (its spawned children), once `count` of them listen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = stat.read_text().rsplit(")", 1)[1].split()[1]
                command = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if parent == str(supervisor) and b"spawn_main" in command:
                found.append(int(stat.parent.name))
        listening = _listening_sockets(port)
        if len(found) == count and all(_socket_inodes(pid) & listening for pid in found):
            return sorted(found)
        time.sleep(0.1)
    raise AssertionError(f"{count} API processes were not listening within {seconds:g} s")


def _listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on `port` (any process)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets the process has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _sockets(pid: int) -> int:
    """How many sockets the process has open."""
    return len(_socket_inodes(pid))
