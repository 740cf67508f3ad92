"""Cluster mode (`livereel serve --ray`): many live sessions over several worker processes
and machines, on Ray Core actors (research/scale-out.md, issue #17).

    browser ──/ws offer──► gateway (streamer.server.Server + gateway.RayBackend)
                              │  open(sdp) / close / watch / health / log
                              ▼
                          Controller actor (named "livereel-controller")
                              registry, placement, admission, session table,
                              session store (event logs, snapshots)
                              │  open(session, epoch, sdp)          ▲ register, report,
                              ▼  restore(log, snapshot)             │ append_log, snapshot,
                                                                    │ commit, ended
                          GenWorker actors (one per device): the model, a Scheduler with
                          K slots, and their sessions' aiortc peers
    browser ◄═══════ WebRTC media + `control` data channel ═══════ GenWorker

The gateway relays the offer and the answer only; media and controls go between the
browser and the worker that makes its frames. Every line of a session's event log goes
to the controller as it is written, so a log outlives the worker that wrote it.

Nothing here is imported unless cluster mode is asked for, so Ray stays an optional
dependency (the `cluster` extra).
"""

NAMESPACE = "livereel"
"""The Ray namespace of livereel's named actors."""
CONTROLLER_NAME = "livereel-controller"
SNAPSHOT_CHUNKS = 20
"""Chunks between two snapshots of a session (10 s of the shipped model's video): a
failover replays at most this many chunks after the latest one."""
