"""The CPU engines (model/engine.py) make what eager PyTorch makes, within 1e-4 relative:
the DiT evaluation (alone, fused with the context pass, batched streams, guidance, a
prompt switch's re-cache, a blend), the VAE decode and the warped prior; exported files
are reused, and what cannot run says why."""

import copy

import numpy as np
import pytest
import torch

from model import load_model
from model.engine import EngineError, available, use_engine
from model.engine_choice import apply_engine
from model.generate import next_frames_batch
from model.sampling import Sampling

ENGINES = [e for e in ("openvino", "onnxruntime") if available(e)]
TOL = 1e-4


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def script(gen, chunks: int) -> list[tuple[torch.Tensor, np.ndarray]]:
    """A stream that meets every path: a pan (warped priors, warm starts), past the window
    (memory eviction), a prompt switch (re-cache: context passes alone), a blend (text
    without cached K/V), a zoom. Latents and frames of every chunk."""
    out = []
    gen.set_prompt("a red ball bouncing over the desert")
    gen.set_camera(pan=(0.4, 0.1))
    for i in range(chunks):
        if i == 7:
            gen.set_prompt("a white star above the city at night")
        if i == 10:
            gen.set_prompt("a blue cube in the rain", transition=2)
        if i == 12:
            gen.set_camera(pan=(0.0, 0.0), zoom=0.5)
        x = gen.step()
        out.append((x.clone(), gen.decode(x)))
    return out


def assert_same(eager_run, engine_run):
    for i, ((xa, fa), (xb, fb)) in enumerate(zip(eager_run, engine_run)):
        assert rel_err(xb, xa) < TOL, f"chunk {i}: latents differ by {rel_err(xb, xa):.2e}"
        assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 1, f"chunk {i}: frames differ"
    assert not torch.equal(eager_run[-1][0], torch.zeros_like(eager_run[-1][0]))


@pytest.mark.parametrize("engine", ENGINES)
@torch.no_grad()
def test_debug_stream_equals_eager(engine, engine_dir):
    eager = load_model("debug")
    fast = use_engine(load_model("debug"), engine, directory=engine_dir)
    runs = [script(Sampling().generator(m, seed=3), 15) for m in (eager, fast)]
    assert_same(*runs)
    parts = fast.engine_parts
    assert all(p.path is not None and p.path.exists() for p in parts.parts)  # every part ran by the engine


@pytest.mark.parametrize("engine", ENGINES)
@torch.no_grad()
def test_object_hint_model_equals_eager(engine, tmp_path):
    """A DiT with the object-hint prior channel (v2): the hint rides in the prior, which
    the exported DiT takes as an input; the first chunk's hint and the later chunks' none."""
    import dataclasses

    from model.checkpoint import build_model
    from model.config import get_config

    cfg = get_config("debug")
    cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, object_hint=True))
    eager = build_model(cfg).eval()
    assert eager.dit.prior_embed.weight.abs().sum() > 0  # the hint's columns are not zero
    fast = use_engine(copy.deepcopy(eager), engine, directory=tmp_path)
    runs = [script(Sampling().generator(m, seed=3), 8) for m in (eager, fast)]
    assert_same(*runs)


@pytest.mark.parametrize("engine", ENGINES)
@torch.no_grad()
def test_a_model_warping_the_picture_shown_equals_eager(engine, tmp_path):
    """`DiTConfig.prior_picture = "shown"`: the engine's prior graph takes the picture the
    decode kept (no decode in it), a re-cache and a blend included."""
    import dataclasses

    from model.checkpoint import LiveReel

    base = load_model("debug")
    cfg = dataclasses.replace(base.config, dit=dataclasses.replace(base.config.dit, prior_picture="shown"))
    eager = LiveReel(cfg).eval()
    eager.load_state_dict(base.state_dict())
    fast = use_engine(copy.deepcopy(eager), engine, directory=tmp_path)
    runs = [script(Sampling().generator(m, seed=3), 15) for m in (eager, fast)]
    assert_same(*runs)
    assert fast.engine_parts.prior.module.fn.__name__ == "warped_prior" and fast.engine_parts.prior.path.exists()


@pytest.mark.parametrize("engine", ENGINES)
@torch.no_grad()
def test_a_model_with_a_display_decoder_equals_eager(engine, tmp_path):
    """`VAEConfig.display_decoder`: the decode graph takes and gives both decoders' states,
    and the picture the prior warps is the first decoder's."""
    import dataclasses

    from model.checkpoint import LiveReel

    base = load_model("debug")
    cfg = dataclasses.replace(base.config, dit=dataclasses.replace(base.config.dit, prior_picture="shown"),
                              vae=dataclasses.replace(base.config.vae, display_decoder=True))
    eager = LiveReel(cfg).eval()
    state = base.state_dict()
    state.update({"vae.display." + k[len("vae.decoder."):]: v + 0.05 * torch.randn_like(v)
                  for k, v in state.items() if k.startswith("vae.decoder.")})
    eager.load_state_dict(state)
    fast = use_engine(copy.deepcopy(eager), engine, directory=tmp_path)
    runs = [script(Sampling().generator(m, seed=3), 8) for m in (eager, fast)]
    assert_same(*runs)


@pytest.mark.parametrize("engine", ENGINES)
@torch.no_grad()
def test_batched_streams_with_guidance_equal_eager(engine, engine_dir):
    """Two streams batched (their context passes fused into the first evaluation, and
    from noise: several evaluations), classifier-free guidance: rows of every kind."""
    sampling = Sampling(steps=3, warm_start=1, guidance=2.0)
    out = []
    for model in (load_model("debug"), use_engine(load_model("debug"), engine, directory=engine_dir)):
        gens = [sampling.generator(model, seed=s) for s in (1, 2)]
        gens[1].set_camera(pan=(-0.3, 0.2))
        frames = [next_frames_batch(gens) for _ in range(4)]
        gens[0].set_prompt("a white star above the city")  # one stream re-caches, the other does not
        frames += [next_frames_batch(gens) for _ in range(3)]
        out.append(([g.unwritten.x.clone() for g in gens], frames))
    for xa, xb in zip(out[0][0], out[1][0]):
        assert rel_err(xb, xa) < TOL
    for fa, fb in zip(out[0][1], out[1][1]):
        for a, b in zip(fa, fb):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@torch.no_grad()
def test_shipped_checkpoint_equals_eager(engine_dir):
    """The shipped model through the default engine, against eager."""
    eager = load_model("default")
    fast = apply_engine(copy.deepcopy(eager), "auto")
    assert fast.engine_parts.engine == "openvino"  # what auto picks on CPU (a core dependency)
    runs = [script(Sampling().generator(m, seed=5), 9) for m in (eager, fast)]
    assert_same(*runs)


@torch.no_grad()
def test_exported_files_are_reused_and_named_by_the_weights(engine_dir):
    engine = ENGINES[0]
    first = use_engine(load_model("debug"), engine, directory=engine_dir)
    Sampling().generator(first, seed=0).next_frames()
    again = use_engine(load_model("debug"), engine, directory=engine_dir)
    Sampling().generator(again, seed=0).next_frames()
    assert again.engine_parts.dit.path == first.engine_parts.dit.path
    assert again.engine_parts.dit.export_s == 0.0  # loaded, not exported
    other = load_model("debug")
    with torch.no_grad():
        other.dit.final.linear.bias.add_(0.5)
    use_engine(other, engine, directory=engine_dir)
    Sampling().generator(other, seed=0).next_frames()
    assert other.engine_parts.dit.path != first.engine_parts.dit.path
    assert other.engine_parts.decoder.path == first.engine_parts.decoder.path  # the same VAE
    assert not list(engine_dir.glob(".export-*"))  # no half-written export left behind


def test_what_cannot_run_says_why(tmp_path):
    model = load_model("debug")
    with pytest.raises(EngineError, match="unknown engine"):
        use_engine(model, "tensorrt")
    with pytest.raises(EngineError, match="--compile"):
        apply_engine(model, ENGINES[0], compiled=True)
    assert not hasattr(apply_engine(load_model("debug"), "auto", compiled=True), "engine_parts")
    assert not hasattr(apply_engine(load_model("debug"), "eager"), "engine_parts")


def test_wan_models_stay_eager(tmp_path):
    from tests.wan_folder import make_wan_folder

    model = load_model(make_wan_folder(tmp_path / "wan"))
    with pytest.raises(EngineError, match="own model family"):
        use_engine(model, ENGINES[0])
    assert apply_engine(model, "auto") is model and not hasattr(model, "engine_parts")
