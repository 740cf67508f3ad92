"""`livereel bench`: the smoke run reports every figure; the batched step and the
no-cache baseline do the same work as the Generator. Timings are not asserted."""

import argparse
import json
import re

import pytest
import torch

from bench import run
from bench.baselines import NoCacheStream
from model.generate import Generator, decode_batch, step_batch

MODEL_FIELDS = {
    "chunk": ["fps_wall", "rtf_wall", "fps_cpu", "rtf_cpu", "video_seconds_per_chunk"],
    "pipelined": ["fps_wall", "rtf_wall"],
    "efficiency": ["flops_per_chunk", "dit_flops_wall", "dit_flops_cpu", "fraction_of_peak_wall",
                   "fraction_of_peak_cpu", "peak"],
    "ttff_offline": ["construct_s", "first_chunk_s", "total_s"],
    "control_offline": ["chunk_s", "prompt", "camera"],
    "baselines": ["lengths", "ours_ms", "no_cache_ms", "unbounded_ms", "unbounded_cache_mb", "steady",
                  "unbounded_ms_per_chunk_of_history"],
    "concurrency": ["1", "2", "4"],
    "live": ["ttff_s", "prompt_latency_s", "camera_latency_s", "client_fps", "held_fraction"],
    "long_run": ["dit_ms_early_wall", "dit_ms_late_wall", "dit_ms_early_cpu", "dit_ms_late_cpu",
                 "late_over_early_cpu", "late_over_early_wall", "curve", "memory", "peak_rss_minute_1_mb",
                 "peak_rss_end_mb", "peak_growth", "python_heap_growth_bytes", "interleaved"],
}
PHASES = ["controls", "prepare", "denoise", "denoise_step", "context", "dit", "decode", "encode", "total"]


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_smoke_reports_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run.main(bench_args("--checkpoint", "debug", "--smoke", "--json", str(out),
                               "--plots", str(tmp_path / "plots"), "--threads", "1", "--widths", "64/2",
                               "--prior-picture", "shown")) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["threads"] == 1 and "thread_policy" in report["meta"]
    assert list(report["models"]) == ["debug"]
    res = report["models"]["debug"]
    assert "random" in res["weights"]
    for section, keys in MODEL_FIELDS.items():
        for key in keys:
            assert key in res[section], f"{section}.{key}"
    for phase in PHASES:
        for clock in ("wall_ms", "cpu_ms"):
            assert {"median", "p95"} <= set(res["chunk"]["phases"][phase][clock]), (phase, clock)
    for n in ("1", "2", "4"):
        for mode in ("batched", "unbatched"):
            assert {"aggregate_fps_wall", "per_session_fps_wall"} <= set(res["concurrency"][n][mode])
    assert {"ours_ms", "no_cache_ms", "speedup", "speedup_p25", "speedup_p75", "ours_step_ms", "no_cache_step_ms",
            "step_speedup"} <= set(res["baselines"]["steady"])
    for what in ("prompt", "camera"):
        assert {"boundary_s", "expected_s", "worst_s"} <= set(res["control_offline"][what])
    assert len(res["baselines"]["no_cache_ms"]) == len(res["baselines"]["lengths"])
    for n in ("1", "2"):  # one evaluation of n chunks side by side
        assert {"ms", "dit_flops_wall", "fraction_of_peak_wall"} <= set(res["efficiency"]["by_rows"][n])
    assert len(res["targets"]) == 10 and all({"name", "target", "value", "met"} <= set(t) for t in res["targets"])
    assert set(res["widths"]) == {"64/2"} and res["widths"]["64/2"]["dim"] == 64
    assert res["config"]["engine"] == "openvino" and res["widths"]["64/2"]["engine"] == "openvino"
    assert res["widths"]["64/2"]["prior_picture"] == "shown"  # the wider DiTs as a next model would be made
    # engines against eager, per width and part, equal to eager's latents
    assert set(report["engines"]) == {"32/2", "64/2"}
    assert report["engines"]["32/2"]["prior_picture"] == "decoded" and report["engines"]["64/2"]["prior_picture"] == "shown"
    for width in report["engines"].values():
        assert {"eager", "openvino", "onnxruntime"} <= set(width["engines"])
        for name, e in width["engines"].items():
            assert set(e["ms"]) == {"prepare", "evaluate", "dit", "decode", "encode", "total"} and e["rtf"] > 0
            assert e["max_rel_error"] < 1e-4
            if name != "eager":
                assert set(e["export_s"]) == {"dit", "dit-fused", "decode", "prior"}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["engines.png", "sessions_debug.png",
                                                                      "stream_length_debug.png", "widths_debug.png"]
    table = capsys.readouterr().out
    assert "real-time factor" in table and "no cache" in table and "DiT width 64/2" in table
    assert "openvino" in table and "max rel err" in table


def test_engines_only_runs_the_comparison_alone(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run.main(bench_args("--checkpoint", "debug", "--smoke", "--engines-only", "--engines", "openvino",
                               "--threads", "1", "--json", str(out))) == 0
    report = json.loads(out.read_text())
    assert report["models"] == {} and set(report["engines"]["32/2"]["engines"]) == {"eager", "openvino"}
    assert "openvino" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_args("--engines", "tensorrt")


def test_wider_dits_are_built_and_timed_as_asked(debug_model):
    """--widths: each spec gets a DiT of that width (the VAE and text encoder kept) and the
    model's own figures; a spec that is not a valid DiT is refused at the flag."""
    from bench import offline

    d = debug_model.config.dit
    wide = offline.wider(debug_model, 2 * d.dim, 2 * d.heads)
    assert (wide.config.dit.dim, wide.config.dit.heads) == (2 * d.dim, 2 * d.heads)
    assert wide.dit.blocks[0].attn.qkv.weight.shape == (6 * d.dim, 2 * d.dim)
    assert all(torch.equal(a, b) for a, b in zip(wide.vae.state_dict().values(), debug_model.vae.state_dict().values()))
    peak = {"flops_wall": 1e11, "flops_cpu": 1e11}
    out = offline.widths(debug_model, [(2 * d.dim, 2 * d.heads)], 2, peak)
    row = out[f"{2 * d.dim}/{2 * d.heads}"]
    params = sum(p.numel() for p in debug_model.dit.parameters()) / 1e6
    assert row["dit_params_m"] > 2 * params
    for key in ("dit_ms", "total_ms", "rtf_wall", "fraction_of_peak_wall", "fraction_of_peak_cpu", "no_cache_speedup"):
        assert row[key] > 0, key
    assert run.width_specs("256/4, 384/6") == [(256, 4), (384, 6)]
    for bad in ("256", "256/5", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            run.width_specs(bad)


@torch.no_grad()
def test_batched_step_equals_streams_alone(debug_model):
    """step_batch over streams at different points (one a few chunks ahead, one switching
    prompt, so starting from noise while the others start from their warped priors)
    gives each the chunk and frames it gets alone."""

    def streams():
        gens = []
        for seed in range(3):
            g = Generator(debug_model, seed=seed, steps=2, warm_start=1)
            g.set_prompt(f"a red ball over snow {seed}")
            g.set_camera(pan=(0.3 * seed, -0.1))
            gens.append(g)
        for _ in range(4):
            gens[0].next_frames()
        return gens

    alone, batch = streams(), streams()
    for i in range(8):
        if i == 3:
            for g in (alone[1], batch[1]):
                g.set_prompt("a blue cube in the desert at night")
        xs = [g.step() for g in alone]
        frames = [g.decode(x) for g, x in zip(alone, xs)]
        ys = step_batch(batch)
        batch_frames = decode_batch(batch, ys)
        for x, y, f, bf in zip(xs, ys, frames, batch_frames):
            assert ((x - y).norm() / y.norm()).item() <= 1e-5
            assert abs(f.astype(int) - bf.astype(int)).max() <= 1
    assert [g.chunk_index for g in batch] == [g.chunk_index for g in alone]


@torch.no_grad()
def test_no_cache_baseline_makes_the_same_chunks_before_eviction(debug_model):
    """The no-cache baseline recomputes the context with the training path: until a
    chunk is pooled into memory it must produce the cached rollout's chunks."""
    d = debug_model.config.dit
    gen = Generator(debug_model, seed=4, steps=2)
    naive = NoCacheStream(Generator(debug_model, seed=4, steps=2))
    for g in (gen, naive.gen):
        g.set_prompt("a green star in the forest")
        g.set_camera(pan=(0.5, 0.2))
    for _ in range(d.sink_chunks + d.window_chunks + 1):
        a, b = gen.step(), naive.step()
        assert ((a - b).norm() / a.norm()).item() <= 1e-4


def test_thread_policy_respects_the_flag_and_times_the_step(monkeypatch):
    import bench.timing as timing

    calls = []
    assert timing.choose_threads(3, lambda: calls.append(1))[0] == 3 and not calls  # the flag: no probe
    monkeypatch.setattr(timing, "cpu_count", lambda: 2)
    clock = [0.0]  # a fake clock: the step "takes" 4 ms / threads ** speedup, whatever the load
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    threads = []

    def step():  # twice as fast on 2 threads: the policy must take 2; no faster: 1
        threads.append(torch.get_num_threads())
        clock[0] += 0.004 / torch.get_num_threads() ** speedup

    for speedup, want in ((1.0, 2), (0.0, 1)):
        threads.clear()
        n, why = timing.choose_threads(None, step)
        assert n == want and why["reason"], why
        assert set(threads) == {1, 2}


def test_wan_bench_runs_tiny_on_a_cpu(tmp_path):
    """`python -m bench.wan` (the GPU script) at a tiny size: every figure, and the memory
    at the last chunk equal to chunk 10's (the cache is preallocated)."""
    import json

    from bench.wan import main

    out = tmp_path / "wan.json"
    assert main(["--size", "tiny", "--resolution", "48x80", "--chunks", "3", "--decoders", "wan,tae",
                 "--device", "cpu", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["decoder"] for r in runs] == ["wan", "tae"]
    for r in runs:
        assert r["dit_ms"] > 0 and r["decode_ms"] > 0 and r["fps"] > 0 and r["switch_s"] > 0
        assert r["memory_bytes"]["chunk_10"] == r["memory_bytes"]["last_chunk"]


def test_bad_output_paths_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import model

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(model, "load_model", no_work)
    monkeypatch.setattr(run, "load_checkpoint", no_work)
    a_file = tmp_path / "a.txt"
    a_file.write_text("")
    for argv, flag in [(["--json", str(tmp_path / "missing" / "bench.json")], "--json"),
                       (["--json", str(tmp_path)], "--json"),
                       (["--plots", str(a_file)], "--plots"),
                       (["--plots", str(a_file / "plots")], "--plots"),
                       (["--plots", "/proc/livereel-plots"], "--plots")]:
        assert run.main(bench_args("--checkpoint", "debug", "--smoke", *argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"livereel bench: {flag} ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_wan_bench_refuses_a_bad_json_path(tmp_path, capsys):
    from bench.wan import main

    with pytest.raises(SystemExit) as exit:
        main(["--size", "tiny", "--json", str(tmp_path / "missing" / "wan.json")])
    assert exit.value.code == 2 and "--json" in capsys.readouterr().err


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_cluster_smoke_reports_every_figure(tmp_path, capsys):
    """`livereel bench --cluster --smoke`: a local Ray cluster of 1 then 2 workers (the debug
    model, 2 slots each) filled with aiortc viewers; every figure there, positive and finite,
    and the 2-worker run's failover moved the killed worker's sessions to the freed one."""
    pytest.importorskip("ray")
    import math

    out, plots = tmp_path / "cluster.json", tmp_path / "plots"
    assert run.main(bench_args("--cluster", "--smoke", "--engine", "eager", "--json", str(out),
                               "--plots", str(plots))) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["checkpoint"] == "debug" and report["meta"]["workers"] == [1, 2]
    assert list(report["counts"]) == ["1", "2"]

    def positive(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    for n, res in report["counts"].items():
        assert res["workers"] == int(n) and res["sessions"] == 2 * int(n) == len(res["per_session"])
        assert all(positive(res[k]) for k in ("start_s", "aggregate_fps", "fps"))
        assert all(positive(res["per_session_fps"][k]) for k in ("mean", "min", "max"))
        assert all(positive(s[k]) for s in res["per_session"] for k in ("fresh_fps", "window_s", "chunk_ms"))
        for what in ("place_answer_s", "place_hello_s"):
            assert res[what]["n"] == res["sessions"] and positive(res[what]["median"]), what
    assert report["counts"]["1"]["failover"] is None  # nowhere to move with one worker
    fail = report["counts"]["2"]["failover"]
    assert fail["killed"] == "w0" and fail["sessions"] == 2 and fail["moved_to"] == ["w1"]
    for what in ("reconnect_s", "answer_s", "first_frame_s"):
        assert fail[what]["n"] == 2 and positive(fail[what]["median"]), what
    assert fail["reconnect_s"]["min"] <= fail["answer_s"]["min"] <= fail["first_frame_s"]["min"]
    assert fail["restore_s"]["n"] == 2 and positive(fail["restore_s"]["median"])
    assert all(0 <= r <= c for r, c in zip(fail["replayed_chunks"], fail["at_chunk"]))
    assert positive(report["counts"]["2"]["snapshot_mb"])  # (3 s windows: past the first snapshot, chunk 20)
    assert [p.name for p in plots.iterdir()] == ["cluster.png"]
    table = capsys.readouterr().out
    assert "aggregate fresh fps" in table and "kill -> first frame" in table


@torch.no_grad()
def test_pipelined_waits_for_the_picture_a_shown_prior_warps():
    """A model whose prior warps the picture shown: the pipelined figure decodes chunk n
    before chunk n+1's prior, so every prior after the first finds its picture (none falls
    back to decoding the latent frame again) and only the encode overlaps."""
    import dataclasses

    from bench.offline import pipelined
    from model.checkpoint import LiveReel, load_model

    base = load_model("debug")
    cfg = dataclasses.replace(base.config, dit=dataclasses.replace(base.config.dit, prior_picture="shown"))
    model = LiveReel(cfg).eval()
    model.load_state_dict(base.state_dict())
    calls = {"warped": 0, "decoded again": 0}
    warped, pixel = model.warped_prior, model.pixel_prior

    def count(key, fn):
        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return wrapped

    model.warped_prior, model.pixel_prior = count("warped", warped), count("decoded again", pixel)
    out = pipelined(model, 6)
    assert out["overlapped"] == "encode"
    assert calls["decoded again"] == 0 and calls["warped"] >= 6, calls
