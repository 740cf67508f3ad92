"""`livereel serve --ray [ADDRESS]`: today's server (the page, the signaling socket, the
token, Origin and Host checks, the limits) as the cluster's gateway: it makes no session
itself, but relays each offer to the controller, which places it on a GenWorker, and
the answer back (`RayBackend`, the Server's `SessionBackend`).

With no ADDRESS it starts a local Ray cluster sized for this machine (`--workers` actors,
no dashboard, a small object store, no usage reporting); with one it joins that
cluster, where more workers may join with `livereel worker --address ADDRESS`.

The controller is detached only when joining a cluster: it then outlives a gateway
restart (with the session table and logs). A local cluster ends with the gateway, and
the controller with it, so nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from streamer.cluster import NAMESPACE
from streamer.controls import Error
from streamer.server import Opened, Server, _serve, _server_full

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 128 * 2**20
"""The local cluster's object store: offers, answers and log lines are all that cross it."""
QUEUE_POLL_SECONDS = 0.5
"""How often a waiting offer's place in line is looked up (and told to its viewer)."""
WORKER_START_SECONDS = 600.0
"""Longest wait for the workers to load their model and register."""


class RayBackend:
    """Sessions on the cluster's workers, through its controller actor."""

    def __init__(self, controller: Any, key: str | None = None, queue_seconds: float = 0.0) -> None:
        self.controller = controller
        self.key = key
        """The model and settings a viewer's session asks for (None: any worker's)."""
        self.queue_seconds = queue_seconds
        """How long an offer waits in line for room before it is refused (0: no line)."""
        self.last_health: dict = {"workers": []}
        self.collector = _WorkerMetrics(self)

    async def open(self, sdp: str, prompt: str, seed: int | None,
                   queued: Callable[[int, str], Awaitable[None]] | None = None) -> Opened | Error:
        import ray

        ticket = secrets.token_urlsafe(12)
        call = asyncio.ensure_future(self._open(sdp, prompt, seed, ticket))
        try:
            told = 0
            while not call.done():
                await asyncio.wait({call}, timeout=QUEUE_POLL_SECONDS)
                if call.done() or queued is None or self.queue_seconds <= 0:
                    continue
                line = await self.controller.queue_position.remote(ticket)
                if line["position"] and line["position"] != told:
                    told = line["position"]
                    await queued(told, line["reason"])
            reply = call.result()
        except asyncio.CancelledError:  # the viewer left while waiting: its place goes to the next
            self.controller.leave_queue.remote(ticket)
            call.add_done_callback(self._close_orphan)
            raise
        except ray.exceptions.RayError as e:
            log.error("the controller failed: %s", e)
            return Error(code="generation_failed", detail="the cluster's controller is not reachable")
        if reply["type"] == "error":
            if reply["code"] == "server_full":
                return _server_full(reply["detail"])
            return Error(code=reply["code"], detail=reply["detail"])
        return Opened(reply["session"], reply["sdp"], reply["worker"])

    async def _open(self, sdp: str, prompt: str, seed: int | None, ticket: str) -> dict:
        return await self.controller.open.remote(sdp, prompt, seed, self.key, ticket, self.queue_seconds)

    def _close_orphan(self, call: asyncio.Future) -> None:
        """A session placed just as its viewer left the line: end it."""
        if not call.cancelled() and call.exception() is None and call.result()["type"] == "answer":
            self.controller.close.remote(call.result()["session"])

    async def watch(self, session: str) -> dict:
        return await self.controller.watch.remote(session)

    async def reconnect(self, session: str, sdp: str) -> Opened | Error:
        reply = await self.controller.reoffer.remote(session, sdp)
        if reply["type"] == "error":
            return Error(code=reply["code"], detail=reply["detail"])
        return Opened(reply["session"], reply["sdp"], reply["worker"])

    async def close(self, session: str) -> None:
        await self.controller.close.remote(session)

    async def health(self) -> dict:
        self.last_health = await self.controller.health.remote()
        return self.last_health

    async def log(self, session: str) -> str | None:
        return await self.controller.log_text.remote(session)


class _WorkerMetrics:
    """Per-worker gauges for /metrics, from the backend's latest health figures."""

    def __init__(self, backend: RayBackend) -> None:
        self.backend = backend

    def describe(self) -> list:
        return []  # (no figures at registration)

    def collect(self):
        workers = self.backend.last_health.get("workers", [])
        families = {
            "sessions": GaugeMetricFamily("livereel_worker_sessions", "Sessions on each worker", labels=["worker"]),
            "slots": GaugeMetricFamily("livereel_worker_slots", "Session slots of each worker", labels=["worker"]),
            "chunk_ms": GaugeMetricFamily("livereel_worker_chunk_milliseconds",
                                          "Latest chunk generation time on each worker", labels=["worker"]),
        }
        for w in workers:
            for name, family in families.items():
                if w.get(name) is not None:
                    family.add_metric([w["worker"]], w[name])
        yield from families.values()


# ---------------------------------------------------------------- the cluster


def init_ray(address: str | None, num_cpus: float | None = None, log_to_driver: bool = True) -> None:
    """Join the cluster at `address`, or start a local one (None) with `num_cpus` logical cores."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports to anyone
    import ray

    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 namespace=NAMESPACE, log_to_driver=log_to_driver, configure_logging=False)
    else:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver, configure_logging=False)


def start_controller(detached: bool, record_dir: str | None = None) -> Any:
    """The controller actor (the running one, where it exists), on this machine where it
    can be (`record_dir` is a folder here)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from streamer.cluster.controller import Controller, controller_options

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(Controller).options(**controller_options(detached), scheduling_strategy=here).remote(record_dir)


def start_workers(ids: list[str], checkpoint: str, sampling: Any, slots: int, *, num_cpus: float,
                  num_gpus: float = 0.0, timeout: float = WORKER_START_SECONDS, **options: Any) -> list:
    """GenWorker actors, each started and registered with the controller (blocks until
    then: each loads the model and makes a warm-up chunk, all at once), in the order of
    `ids` (placement fills them in that order). Raises TimeoutError past `timeout` seconds
    (a worker the cluster has no room for waits: Ray places it once resources free up)."""
    import ray

    from streamer.cluster.worker import spawn_worker

    if not ids:
        return []
    workers = [spawn_worker(i, checkpoint, sampling, slots, num_cpus=num_cpus, num_gpus=num_gpus, **options)
               for i in ids]
    deadline = time.monotonic() + timeout
    ready, waiting = ray.wait([w.ping.remote() for w in workers], num_returns=len(workers), timeout=timeout)
    if waiting:
        raise TimeoutError(f"{len(waiting)} of {len(workers)} workers not started in {timeout:.0f} s (each asks "
                           f"for {num_cpus:g} CPUs and {num_gpus:g} GPUs: does the cluster have them free?)")
    ray.get(ready)  # (raises what a worker's start raised)
    for w in workers:
        ray.get(w.start.remote(), timeout=max(deadline - time.monotonic(), 1.0))
    return workers


def main(args: argparse.Namespace, sampling: Any, wan: Any, ice_servers: list) -> int:
    """`livereel serve --ray`: the flags are checked by streamer.server.main."""
    from streamer.admission import Capacity

    local = args.ray == "local"
    if args.workers < (1 if local else 0):
        log.error("--workers must be at least %d", 1 if local else 0)
        return 2
    if args.slots < 1:
        log.error("--slots must be at least 1")
        return 2
    if args.snapshot_every < 0:
        log.error("--snapshot-every must be 0 (none) or more chunks")
        return 2
    if not 0 <= args.queue_seconds <= 600:
        log.error("--queue-seconds must be in [0, 600]")
        return 2
    cores = os.cpu_count() or 1
    worker_cpus = args.worker_cpus if args.worker_cpus is not None else cores / max(args.workers, 1)
    if worker_cpus <= 0:
        log.error("--worker-cpus must be above 0")
        return 2
    try:
        import ray
    except ModuleNotFoundError:
        log.error("--ray needs Ray: pip install 'livereel[cluster]'")
        return 2
    start = time.perf_counter()
    init_ray(None if local else args.ray, num_cpus=max(cores, worker_cpus * args.workers) if local else None)
    try:
        controller = start_controller(detached=not local,
                                      record_dir=str(args.record_dir) if args.record_dir is not None else None)
        prefix = "w" if local else f"w{os.getpid()}-"
        if args.workers:
            log.info("starting %d worker(s) of %d slots (%.2g cores each)", args.workers, args.slots, worker_cpus)
        try:
            workers = start_workers([f"{prefix}{i}" for i in range(args.workers)], args.checkpoint, sampling,
                                    args.slots, num_cpus=worker_cpus, num_gpus=args.worker_gpus, engine=args.engine,
                                    wan=wan, ice_servers=ice_servers, loopback_only=_loopback(args.host),
                                    threads=max(1, int(worker_cpus)), admission=args.admission,
                                    snapshot_every=args.snapshot_every)
        except TimeoutError as e:
            log.error("%s", e)
            return 1
        except ray.exceptions.RayActorError as e:  # its constructor raised (a bad checkpoint, ...)
            log.error("a worker failed to start: %s", e)
            return 1
        if not workers:
            log.info("waiting for a worker to join (livereel worker --address %s)", args.ray)
        if ray.get(controller.wait_for_workers.remote(1, WORKER_START_SECONDS)) < 1:
            log.error("no worker registered in %.0f s", WORKER_START_SECONDS)
            return 1
        info = ray.get(controller.info.remote())
        slots = ray.get(controller.health.remote())["slots"]
        log.info("cluster ready in %.1f s: %d slots", time.perf_counter() - start, slots)
        server = Server(
            None,
            info,
            host=args.host,
            max_sessions=max(slots, 1),
            ice_servers=ice_servers,
            default_prompt=args.prompt,
            token=args.token,
            allowed_origins=args.allow_origin,
            capacity=Capacity(limit=max(slots, 1), budget=info.frames_per_chunk / info.fps, batched=True),
            backend=RayBackend(controller, queue_seconds=args.queue_seconds),
        )
        code = asyncio.run(_serve(server, args.port))
        del workers  # (kept until here: an actor whose handles are all gone ends)
        return code
    finally:
        ray.shutdown()


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
