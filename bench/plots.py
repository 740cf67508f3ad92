"""PNG plots of a benchmark report: chunk time against stream length (ours and the
baselines), and fps against the number of sessions (batched and unbatched)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def stream_length(name: str, res: dict, path: Path) -> Path:
    base, long = res["baselines"], res["long_run"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = long["curve"]
    ax.plot(base["lengths"], base["ours_ms"], "o-", color="C0", label="ours: sink | memory | window cache")
    ax.plot(curve["lengths"], curve["dit_ms_wall"], "o:", color="C0", alpha=0.6,
            label=f"ours, one {long['video_minutes']:.0f}-minute stream (fresh process)")
    ax.plot(base["lengths"], base["no_cache_ms"], "s-", label="no KV cache (context recomputed every step)")
    grown = [(n, t) for n, t in zip(base["lengths"], base["unbounded_ms"]) if t is not None]
    if grown:
        ax.plot(*zip(*grown), "^-", label="unbounded cache (every frame kept)")
    if "unbounded_ms_at_1000_extrapolated" in base and base["unbounded_max"] < max(base["lengths"]):
        last = grown[-1]
        ax.plot([last[0], 1000], [last[1], base["unbounded_ms_at_1000_extrapolated"]], "^:", color="C2",
                label="unbounded, extrapolated")
    ax.axhline(1e3 * res["chunk"]["video_seconds_per_chunk"], color="grey", ls="--", lw=1,
               label="real time (video length of a chunk)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stream length (chunks made before this one)")
    ax.set_ylabel("DiT time per chunk, ms (wall)")
    ax.set_title(f"{name}: chunk time vs stream length")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sessions(name: str, res: dict, fps: int, path: Path) -> Path:
    conc = res["concurrency"]
    ns = sorted(int(n) for n in conc)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("unbatched", "o-"), ("batched", "s-")):
        ax.plot(ns, [conc[str(n)][mode]["aggregate_fps_wall"] for n in ns], style, label=f"aggregate, {mode}")
        ax.plot(ns, [conc[str(n)][mode]["per_session_fps_wall"] for n in ns], style.replace("-", "--"),
                label=f"per session, {mode}")
    ax.axhline(fps, color="grey", ls="--", lw=1, label=f"real time ({fps} fps)")
    ax.set_xticks(ns)
    ax.set_xlabel("sessions")
    ax.set_ylabel("frames per second (wall)")
    ax.set_title(f"{name}: throughput vs sessions")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def widths(name: str, res: dict, path: Path) -> Path:
    """Share of the matmul peak and real-time factor against the DiT's width: the model
    itself, then the wider DiTs of `--widths`, with the targets as lines."""
    rows = [(res["config"]["dim"], res["efficiency"]["fraction_of_peak_wall"], res["chunk"]["rtf_wall"])]
    rows += sorted((w["dim"], w["fraction_of_peak_wall"], w["rtf_wall"]) for w in res["widths"].values())
    dims, share, rtf = zip(*rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(dims, [100 * s for s in share], "o-", color="C0", label="DiT share of the matmul peak")
    ax.axhline(40, color="C0", ls="--", lw=1, label="target: 40% of peak")
    ax.set_xlabel(f"DiT width (dim; {dims[0]} is {name}, the wider ones random weights)")
    ax.set_ylabel("share of the matmul peak, % (wall)", color="C0")
    ax.set_ylim(0, max(45, 100 * max(share) + 5))
    ax.set_xticks(dims)
    right = ax.twinx()
    right.plot(dims, rtf, "s-", color="C3", label="real-time factor, one session")
    right.axhline(2, color="C3", ls=":", lw=1, label="target: real-time factor 2")
    right.set_ylabel("real-time factor (video s per wall s)", color="C3")
    right.set_ylim(0, max(rtf) * 1.2)
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower center")
    ax.set_title(f"{name}: a wider DiT uses more of the peak and loses real time")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def engines(results: dict, path: Path) -> Path:
    """Chunk time per part, stacked, for each engine at each DiT width, with real time marked."""
    parts = ("prepare", "dit", "decode", "encode")
    labels = {"prepare": "warped prior", "dit": "DiT", "decode": "VAE decode", "encode": "VP8 encode"}
    bars = [(spec, name, e) for spec, res in results.items() for name, e in res["engines"].items()]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(bars) + 2), 4.5))
    xs = range(len(bars))
    bottom = [0.0] * len(bars)
    for i, part in enumerate(parts):
        ms = [e["ms"][part] for _, _, e in bars]
        ax.bar(xs, ms, bottom=bottom, color=f"C{i}", label=labels[part])
        bottom = [b + m for b, m in zip(bottom, ms)]
    for x, (_, _, e), top in zip(xs, bars, bottom):
        ax.text(x, top, f"RTF {e['rtf']:.2f}", ha="center", va="bottom", fontsize=8)
    eager = next(iter(results.values()))["engines"]["eager"]
    video_ms = eager["rtf"] * eager["ms"]["total"]  # the video a chunk holds
    ax.axhline(video_ms, color="grey", ls="--", lw=1, label="real time (video length of a chunk)")
    ax.set_xticks(list(xs), [f"{spec}\n{name}" for spec, name, _ in bars], fontsize=8)
    ax.set_xlabel("DiT width / heads, engine")
    ax.set_ylabel("ms per chunk (median, wall)")
    ax.set_title("A chunk's parts by engine (interleaved in one process)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
