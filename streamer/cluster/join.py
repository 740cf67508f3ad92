"""`livereel worker --address ADDRESS`: join a Ray cluster and serve sessions there: one
GenWorker actor on this machine (its model, `--slots` sessions and their WebRTC peers),
registered with the cluster's controller, until this process is stopped (Ctrl-C,
SIGTERM): the worker then drains (it takes no new session, and its sessions move to
other workers, their viewers reconnecting by themselves) for up to DRAIN_SECONDS, and
ends.

Start the head first (`ray start --head`), then the gateway (`livereel serve --ray
HEAD:6379`) and the workers, in any order: the controller is made by whichever comes
first.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time

from model.engine_choice import add_engine_argument
from model.sampling import add_sampling_arguments, sampling_from_args
from model.wan.config import add_wan_arguments, wan_options_from_args
from streamer.server import add_snapshot_argument
from streamer.webrtc import parse_ice_server

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0
"""On stop: the longest wait for this worker's sessions to move elsewhere."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, help="the Ray cluster's head, host:port (as `ray start` says)")
    parser.add_argument(
        "--checkpoint", default="default",
        help='"default" (shipped model), "debug" (tiny, random), a path, or a Wan checkpoint folder')
    parser.add_argument("--slots", type=int, default=2, help="sessions this worker streams at once")
    parser.add_argument("--cpus", type=float, default=None, help="CPU cores Ray reserves for it (default: all)")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs Ray reserves for it")
    parser.add_argument("--id", default=None, help="its name in /healthz (default: HOSTNAME-PID)")
    parser.add_argument(
        "--ice-server", action="append", default=[], metavar="URL",
        help="STUN/TURN server for its peers, repeatable: stun:HOST:PORT or turn:USER:PASS@HOST:PORT")
    parser.add_argument("--record-dir", default=None,
                        help="where the controller writes session logs, if this worker starts it")
    parser.add_argument(
        "--admission", choices=("measured", "limit"), default="measured",
        help="measured: take a new session only while every one of its sessions stays real time (rounds of chunks "
             "timed at start and under load); limit: up to --slots whatever the speed")
    add_snapshot_argument(parser)
    add_sampling_arguments(parser)
    add_wan_arguments(parser)
    add_engine_argument(parser)


def main(args: argparse.Namespace) -> int:
    try:
        ice_servers = [parse_ice_server(url) for url in args.ice_server]
        sampling = sampling_from_args(args)
        wan = wan_options_from_args(args)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if args.slots < 1:
        log.error("--slots must be at least 1")
        return 2
    if args.snapshot_every < 0:
        log.error("--snapshot-every must be 0 (none) or more chunks")
        return 2
    cpus = args.cpus if args.cpus is not None else float(os.cpu_count() or 1)
    try:
        import ray
    except ModuleNotFoundError:
        log.error("livereel worker needs Ray: pip install 'livereel[cluster]'")
        return 2
    from streamer.cluster.gateway import init_ray, start_controller
    from streamer.cluster.worker import spawn_worker

    worker_id = args.id or f"{socket.gethostname()}-{os.getpid()}"
    ours = signal.getsignal(signal.SIGTERM)
    init_ray(args.address)
    signal.signal(signal.SIGTERM, ours)  # (Ray's driver takes SIGTERM over: the CLI's own exit, 143, again)
    try:
        controller = start_controller(detached=True, record_dir=args.record_dir)  # (the running one, if any)
        start = time.perf_counter()
        worker = spawn_worker(worker_id, args.checkpoint, sampling, args.slots, num_cpus=cpus, num_gpus=args.gpus,
                              engine=args.engine, wan=wan, ice_servers=ice_servers, loopback_only=False,
                              threads=max(1, int(cpus)), admission=args.admission,
                              snapshot_every=args.snapshot_every)
        ray.get(worker.start.remote())
        log.info("worker %s: serving %d slots in the cluster at %s (ready in %.1f s)", worker_id, args.slots,
                 args.address, time.perf_counter() - start)
        try:
            _wait_for_stop()
        except BaseException:  # Ctrl-C or SIGTERM (as the CLI raises them): hand the sessions over first
            log.info("worker %s: leaving; moving its sessions to other workers", worker_id)
            try:
                left = ray.get(controller.drain.remote(worker_id), timeout=DRAIN_SECONDS)
            except ray.exceptions.GetTimeoutError:
                left = "some"
            if left:
                log.info("worker %s: %s session(s) could not move; they end here", worker_id, left)
            raise
        return 0
    finally:
        ray.shutdown()  # (the worker is this process's actor: it ends with it)


def _wait_for_stop() -> None:
    """Sleep until Ctrl-C or SIGTERM (livereel's CLI turns both into exceptions)."""
    while True:
        time.sleep(3600)
