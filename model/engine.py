"""A built livereel model's per-chunk work run by a CPU inference engine, one graph per part.

On 2 CPU cores the eager DiT evaluation is dispatch-bound (the bench's profile: a third of
its time is torch's C++ between kernels, a quarter OpenMP barriers, a fifth Python). Here
each part of a chunk is a pure function of tensors, exported once to ONNX (torch.export,
then `torch.onnx`) and run by an engine that plans the whole graph: fused attention,
fused elementwise chains, no per-op dispatch.

Parts (each a small `nn.Module` over the model's own modules, so there is one model):
- "dit": one streaming evaluation (`StreamEval`): chunk latents, timesteps, camera, text
  and the context's `FlatRead` in; velocity and every layer's new K/V out. The context's
  writes are done by the caller (`write_layers`), so the cache stays plain Python.
  "dit-fused": the same with the previous chunks' context passes riding along
  (`cache.kv.FusedBatch`), their reads given apart (no copy joins them before the graph).
- "decode": one streaming VAE decode step (latents and the decoder's state in; frames in
  [-1, 1], the picture the stream keeps of the last one and the next state out; with a
  display decoder, both decoders' states).
- "prior": the warped prior in pixel space (model/prior.py), the way the model streams:
  the last latent frame decoded, warped and encoded, or the picture shown of it warped
  and encoded (`DiTConfig.prior_picture`).
Rows (streams, guidance, context passes) are dynamic axes of the exported file; the engine
compiles it once per shape it meets (static shapes ran 1.2x faster in OpenVINO).

Engines: "openvino" (OpenVINO's CPU plugin, reading the ONNX file), "onnxruntime", and
"eager" (none: PyTorch as built). `use_engine(model, name)` applies one to a built model,
as `model.compile.compile_dit` does: the model file does not import this one. Exported
files are kept under `cache_dir()` (`~/.cache/livereel/engine`), named by a digest of the
weights, the part, the input shapes, the torch version and the source of the model and
cache packages, so a second start only loads them. Measured (README, "CPU engine"):
`livereel bench --engines-only --widths 192/3,256/4,384/6`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from cache.kv import FlatRead
from model.camera import CameraCond
from model.conditioning import TextCond
from model.ops import apply_rope
from model.prior import pixel_prior, warped_prior

log = logging.getLogger(__name__)

ENGINES = ("eager", "openvino", "onnxruntime")
FORMAT = 2  # the exported files' layout (their names also hash the code that made them)
PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}


class EngineError(RuntimeError):
    """An engine that cannot run here (not installed, or not for this model or device)."""


def available(name: str) -> bool:
    return name == "eager" or importlib.util.find_spec(PACKAGES[name]) is not None


def default_engine(device: torch.device | str = "cpu") -> str:
    """The engine a CPU model gets unless told: OpenVINO where it is installed (a core
    dependency; the measured winner), else eager. CUDA models stay eager."""
    return "openvino" if torch.device(device).type == "cpu" and available("openvino") else "eager"


def cache_dir() -> Path:
    """Where exported graphs are kept: $LIVEREEL_ENGINE_CACHE, else ~/.cache/livereel/engine."""
    env = os.environ.get("LIVEREEL_ENGINE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "livereel" / "engine"


# --------------------------------------------------------------------------- pure functions


class GraphRead:
    """The context verbs over a `FlatRead`'s tensors, inside a graph: each layer's keys are
    [read | linked rows' new keys | own new keys], and `write` only collects the new K/V."""

    def __init__(self, k_rot: Tensor, v: Tensor, visible: Tensor, cos: Tensor, sin: Tensor, link: Tensor,
                 linked: Tensor, link_cos: Tensor, link_sin: Tensor, prior: Tensor | None,
                 ctx_k_rot: Tensor | None = None, ctx_v: Tensor | None = None):
        R, Nc, Tc = visible.shape[0], visible.shape[1], cos.shape[2]
        self.k_rot, self.v, self.n_read = k_rot, v, Nc
        self.ctx_k_rot, self.ctx_v = ctx_k_rot, ctx_v  # the deferred rows' reads, joined layer by layer
        self.cos, self.sin, self.link, self.link_cos, self.link_sin = cos, sin, link, link_cos, link_sin
        self.prior = prior
        seen = torch.cat((visible, linked[:, None].expand(R, Tc), torch.ones_like(visible[:, :1]).expand(R, Tc)), 1)
        self.bias = torch.zeros(seen.shape, dtype=k_rot.dtype).masked_fill(~seen, float("-inf"))[:, None, None]
        self.ks: list[Tensor] = []
        self.vs: list[Tensor] = []

    def write_frame(self, frame: Tensor, pos: Tensor) -> None:
        pass  # the caller's context keeps the chunk's last frame

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.ks.append(k)
        self.vs.append(v)
        n = self.n_read
        k_read, v_read = self.k_rot[layer][:, :, :n], self.v[layer][:, :, :n]
        if self.ctx_k_rot is not None:
            k_read = torch.cat((self.ctx_k_rot[layer][:, :, :n], k_read))
            v_read = torch.cat((self.ctx_v[layer][:, :, :n], v_read))
        self._k = torch.cat((k_read, apply_rope(k[self.link], self.link_cos, self.link_sin),
                             apply_rope(k, self.cos, self.sin)), 2)
        self._v = torch.cat((v_read, v[self.link], v), 2)

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        return self._k, self._v, self.bias

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin


READ = ("x", "t", "pos", "motion", "pooled", "text_mask", "text_kv", "k_rot", "v", "visible", "cos", "sin", "prior")
ROW_DIM = {"text_kv": 2, "k_rot": 1, "v": 1}  # the rows' dimension of each input (0 where not named)


class StreamEval(nn.Module):
    """One streaming DiT evaluation as a pure function: (velocity (R, K, C, h, w), new keys
    before RoPE and values (depth, R', H, tokens_per_chunk, Dh)).

    The rows' inputs are named as `READ` (and the link of a `FlatRead`); with `fused`,
    the same again prefixed "ctx_" for the deferred context passes that ride along
    (`cache.kv.FusedBatch`): they come first in the K/V out (R' = both), their velocity
    is not computed (their last block stops after its K/V), and no copy joins the two
    groups' reads outside the graph."""

    def __init__(self, dit: nn.Module, fused: bool = False):
        super().__init__()
        self.dit, self.fused = dit, fused

    def forward(self, x, t, pos, motion, pooled, text_mask, text_kv, k_rot, v, visible, cos, sin, link, linked,
                link_cos, link_sin, prior=None, ctx_x=None, ctx_t=None, ctx_pos=None, ctx_motion=None,
                ctx_pooled=None, ctx_text_mask=None, ctx_text_kv=None, ctx_k_rot=None, ctx_v=None,
                ctx_visible=None, ctx_cos=None, ctx_sin=None, ctx_prior=None):
        skip = 0
        if self.fused:  # deferred rows first; they attend to no other row's new K/V
            skip = ctx_x.shape[0]
            x, t, pos, motion, pooled, text_mask, visible, cos, sin = (
                torch.cat(pair) for pair in ((ctx_x, x), (ctx_t, t), (ctx_pos, pos), (ctx_motion, motion),
                                             (ctx_pooled, pooled), (ctx_text_mask, text_mask),
                                             (ctx_visible, visible), (ctx_cos, cos), (ctx_sin, sin)))
            text_kv = torch.cat((ctx_text_kv, text_kv), 2)
            prior = None if prior is None else torch.cat((ctx_prior, prior))
            link = torch.cat((torch.zeros_like(ctx_visible[:, 0], dtype=link.dtype), link))
            linked = torch.cat((torch.zeros_like(ctx_visible[:, 0]), linked))
            link_cos = torch.cat((torch.ones_like(ctx_cos), link_cos))
            link_sin = torch.cat((torch.zeros_like(ctx_sin), link_sin))
        ctx = GraphRead(k_rot, v, visible, cos, sin, link, linked, link_cos, link_sin, prior, ctx_k_rot, ctx_v)
        text = TextCond(pooled[:, None], text_mask, pooled, text_kv)
        out = self.dit(x, t, text, CameraCond(pos, motion), ctx, context_rows=skip)
        return out, torch.stack(ctx.ks), torch.stack(ctx.vs)


class DecodeStep(nn.Module):
    """A streaming VAE decode step (`VAE.decode_shown`): DiT-scale latents (B, K, C, h, w)
    and the decoder's state (B, C', h, w) (zeros before the first chunk) -> frames shown
    (B, K, 3, H, W), the picture kept of the last one (B, 3, H, W), state; with a display
    decoder, its state is an input and an output too."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor, state: Tensor, display_state: Tensor | None = None) -> tuple[Tensor, ...]:
        states = [state] if display_state is None else [state, display_state]
        frames, picture, states = self.vae.decode_shown(self.vae.from_dit(z), states)
        return frames, picture, *states


class Prior(nn.Module):
    """The model's warped prior as a pure function: `model.prior.pixel_prior` (the latent
    frame in: decode, warp, encode) or `warped_prior` (the picture shown in: warp, encode),
    as `DiTConfig.prior_picture` says."""

    def __init__(self, vae: nn.Module, grid: int, shown: bool):
        super().__init__()
        self.vae, self.grid, self.fn = vae, grid, warped_prior if shown else pixel_prior

    def forward(self, source: Tensor, frame_pos: Tensor, valid: Tensor, pos: Tensor) -> Tensor:
        return self.fn(self.vae, source, frame_pos, valid, pos, self.grid)


# --------------------------------------------------------------------------- export and run


@functools.cache
def _code_digest() -> str:
    """The source of the model and cache packages: an exported graph is that code traced,
    so a change to it (an upgrade, an edit) exports anew."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted([*(root / "model").glob("*.py"), *(root / "cache").glob("*.py")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _digest(module: nn.Module, name: str, inputs: dict[str, Tensor], dynamic: "Dynamic") -> str:
    free = {k: d for k, (d, _) in dynamic.items()}
    h = hashlib.sha256(json.dumps({"format": FORMAT, "part": name, "torch": torch.__version__, "code": _code_digest(),
                                   "shapes": {k: [-1 if i == free.get(k) else n for i, n in enumerate(v.shape)]
                                              for k, v in inputs.items()},
                                   "dtypes": {k: str(v.dtype) for k, v in inputs.items()}}).encode())
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


Dynamic = dict[str, tuple[int, str]]  # input name -> (its dimension, that dimension's name)


def export_onnx(module: nn.Module, inputs: dict[str, Tensor], dynamic: Dynamic, path: Path) -> None:
    """`module(**inputs)` to an ONNX file at `path` (written whole or not at all), with the
    dimensions `dynamic` names free (the rows: one graph for any number of streams)."""
    dims = {name: torch.export.Dim(name, min=1, max=1024) for _, name in dynamic.values()}
    shapes = {k: ({dynamic[k][0]: dims[dynamic[k][1]]} if k in dynamic else None) for k in inputs}
    # a dimension of size 1 in the example is taken for a constant: show it 2 rows (a copy
    # of each input's first; row indices such as a link stay valid)
    inputs = {k: torch.cat((v, v), dynamic[k][0]) if k in dynamic and v.shape[dynamic[k][0]] == 1 else v
              for k, v in inputs.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp, _quiet_exporter():
        out = Path(tmp) / path.name
        with torch.no_grad():
            # the engines optimise the graph themselves: onnxscript's pass costs a third of
            # the export time and changed nothing OpenVINO ran (13.3 vs 13.1 ms)
            program = torch.onnx.export(module, (), kwargs=inputs, dynamic_shapes=shapes, dynamo=True,
                                        optimize=False, verbose=False, external_data=False)
        program.save(str(out), external_data=False)
        os.replace(out, path)


KEEP = 8  # exported files kept per part (other weights, shapes, code); the oldest go first


def _prune(directory: Path, name: str) -> None:
    files = sorted(directory.glob(f"{name}-" + "[0-9a-f]" * 20 + ".onnx"), key=lambda f: f.stat().st_mtime)
    for old in files[:-KEEP]:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's passes log every rewrite at INFO and warn about its own internals
    (torchvision's ops not registered, and the like)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class Part:
    """One pure function of a model, exported on its first call (rows a dynamic axis) and
    run by an engine from then on, compiled once per input shape it meets (static shapes
    run 1.2x faster than the dynamic graph in OpenVINO). One call at a time: a lock, as
    decode may run beside the DiT on another thread."""

    def __init__(self, name: str, module: nn.Module, engine: str, dynamic: Dynamic, threads: int,
                 directory: Path):
        self.name, self.module, self.engine, self.dynamic = name, module.eval(), engine, dynamic
        self.threads, self.directory = threads, directory
        self.path: Path | None = None
        self.export_s = 0.0  # seconds spent exporting (0 when the file was there)
        self.load_s = 0.0  # seconds spent loading and compiling, all shapes
        self._runs: dict[tuple, tuple[Callable[[dict], list], list[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, **inputs: Tensor) -> list[Tensor]:
        with self._lock:
            key = tuple((k, tuple(v.shape)) for k, v in inputs.items())
            if key not in self._runs:
                self._runs[key] = self._prepare(inputs)
            run, names = self._runs[key]
            feeds = {k: inputs[k].detach().contiguous().numpy() for k in names}
            return [torch.from_numpy(o) for o in run(feeds)]

    def _prepare(self, inputs: dict[str, Tensor]) -> tuple[Callable[[dict], list], list[str]]:
        if self.path is None:
            dynamic = {k: d for k, d in self.dynamic.items() if k in inputs}
            path = self.directory / f"{self.name}-{_digest(self.module, self.name, inputs, dynamic)}.onnx"
            if not path.exists():
                log.info("engine: exporting %s to ONNX (once for these weights; seconds to a minute)", self.name)
                start = time.perf_counter()
                export_onnx(self.module, inputs, dynamic, path)
                self.export_s = time.perf_counter() - start
                log.info("engine: exported %s in %.1f s (%s)", self.name, self.export_s, path)
                _prune(self.directory, self.name)
            else:
                os.utime(path)  # recently used: pruned last
            self.path = path
        start = time.perf_counter()
        sizes = {name: inputs[k].shape[d] for k, (d, name) in self.dynamic.items() if k in inputs}
        run = RUNNERS[self.engine](self.path, self.threads, {k: tuple(v.shape) for k, v in inputs.items()}, sizes)
        self.load_s += time.perf_counter() - start
        return run


@functools.cache
def _ov_core():
    import openvino as ov

    return ov.Core()


@functools.cache
def _ov_model(path: Path):
    """An ONNX file read once (each shape compiles a reshaped clone of it)."""
    return _ov_core().read_model(str(path))


def _openvino(path: Path, threads: int, shapes: dict[str, tuple[int, ...]], sizes: dict[str, int]
              ) -> tuple[Callable[[dict], list], list[str]]:
    import openvino as ov

    core = _ov_core()
    model = _ov_model(path).clone()
    names = [i.get_any_name() for i in model.inputs]  # an input the function never reads is not there
    model.reshape({n: ov.PartialShape(list(shapes[n])) for n in names})
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16 behind our back: outputs equal eager's
        # pinning binds the calling thread too, and torch's workers made later inherit its
        # one core: eager work in the same process ran 1.3x slower
        "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()

    def run(feeds: dict) -> list:
        result = request.infer(feeds, share_inputs=True, share_outputs=False)
        return [result[o] for o in compiled.outputs]

    return run, names


def _onnxruntime(path: Path, threads: int, shapes: dict[str, tuple[int, ...]], sizes: dict[str, int]
                 ) -> tuple[Callable[[dict], list], list[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: it warns of every node it cannot constant-fold
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to torch between runs
    for name, size in sizes.items():  # a static shape per session, as OpenVINO's reshape
        options.add_free_dimension_override_by_name(name, size)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return (lambda feeds: session.run(None, feeds)), [i.name for i in session.get_inputs()]


Runner = Callable[[Path, int, dict, dict], tuple[Callable[[dict], list], list[str]]]
RUNNERS: dict[str, Runner] = {"openvino": _openvino, "onnxruntime": _onnxruntime}


# --------------------------------------------------------------------------- the model's parts


class EngineParts:
    """The engine-run parts of one model and the protocol methods that call them."""

    def __init__(self, model, engine: str, threads: int, directory: Path):
        d = model.config.dit
        self.model, self.engine = model, engine
        rows = {k: (ROW_DIM.get(k, 0), "rows") for k in (*READ, "link", "linked", "link_cos", "link_sin")}
        ctx_rows = {"ctx_" + k: (ROW_DIM.get(k, 0), "ctx_rows") for k in READ}
        self.dit = Part("dit", StreamEval(model.dit), engine, rows, threads, directory)
        self.dit_fused = Part("dit-fused", StreamEval(model.dit, fused=True), engine, {**rows, **ctx_rows},
                              threads, directory)
        self.decoder = Part("decode", DecodeStep(model.vae), engine,
                            {k: (0, "rows") for k in ("z", "state", "display_state")}, threads, directory)
        self.prior = (Part("prior", Prior(model.vae, d.grid, model.prior_from_shown), engine,
                           {k: (0, "rows") for k in ("source", "frame_pos", "valid", "pos")}, threads, directory)
                      if d.warp_prior and d.prior_space == "pixel" else None)

    @property
    def parts(self) -> list[Part]:
        return [p for p in (self.dit, self.dit_fused, self.decoder, self.prior) if p is not None]

    def evaluate(self, x: Tensor, t: Tensor, text: TextCond, camera: CameraCond, ctx, kv_only: bool = False,
                 context_rows: int = 0) -> Tensor | None:
        """`LiveReel.evaluate` through the engine: the same velocity and cache writes."""
        if not hasattr(ctx, "flat_reads"):  # a training-path context: the eager model
            return self.model.dit(x, t, text, camera, ctx, kv_only=kv_only, context_rows=context_rows)
        deferred, read = ctx.flat_reads()  # deferred: the first `context_rows` rows' read (a FusedBatch)
        kv = text.kv if text.kv is not None else self.model.dit.text_kv(text)
        n = context_rows

        def rows(r: FlatRead, s: slice, prefix: str = "") -> dict[str, Tensor]:
            got = {"x": x[s], "t": t[s], "pos": camera.pos[s], "motion": camera.motion[s], "pooled": text.pooled[s],
                   "text_mask": text.mask[s], "text_kv": kv[:, :, s], "k_rot": r.k_rot, "v": r.v,
                   "visible": r.visible, "cos": r.cos, "sin": r.sin}
            if r.prior is not None:
                got["prior"] = r.prior
            return {prefix + k: val for k, val in got.items()}

        inputs = {**rows(read, slice(n, None)), "link": read.link, "linked": read.linked, "link_cos": read.link_cos,
                  "link_sin": read.link_sin}
        if deferred is not None:
            inputs.update(rows(deferred, slice(0, n), "ctx_"))
        velocity, k, v = (self.dit_fused if deferred is not None else self.dit)(**inputs)
        ctx.write_layers(k, v)
        if self.model.config.dit.warp_prior:
            ctx.write_frame(x[:, -1], camera.pos[:, -1])
        return None if kv_only else velocity  # the fused graph leaves out the deferred rows'

    def decode(self, latents: Tensor, state):
        frames, _, state = self.decode_pictures(latents, state)
        return frames, state

    def decode_pictures(self, latents: Tensor, state):
        """`LiveReel.decode_pictures` through the engine (states before the first chunk: zeros)."""
        shape = (latents.shape[0], self.model.config.vae.dec_channels[0], *latents.shape[-2:])
        prev = [torch.zeros(shape) if s is None else s for s in state]
        inputs = {"z": latents, "state": prev[0]}
        if len(prev) > 1:
            inputs["display_state"] = prev[1]
        frames, picture, *state = self.decoder(**inputs)
        return frames, picture, state

    def warped(self, vae, source: Tensor, frame_pos: Tensor, valid: Tensor, pos: Tensor, grid: int) -> Tensor:
        """The model's `pixel_prior` or `warped_prior` (the one the graph was made of)."""
        return self.prior(source=source, frame_pos=frame_pos, valid=valid, pos=pos)[0]


def use_engine(model, engine: str, threads: int | None = None, directory: Path | None = None):
    """Run `model`'s DiT evaluation, VAE decode and warped prior by `engine` from now on
    (in place; returns the model). Each part is exported on its first call, or loaded
    from `directory` (default `cache_dir()`) when an earlier run exported it.
    "eager" leaves the model as built. `threads`: the engine's (default: torch's count
    now); torch itself is set to one thread (see below)."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "eager":
        return model
    if not available(engine):
        raise EngineError(f"engine {engine!r} is not installed: pip install {PACKAGES[engine]}")
    from model.checkpoint import LiveReel

    if not isinstance(model, LiveReel):
        raise EngineError(f"engine {engine!r} runs livereel's own model family; use --engine eager for "
                          f"{type(model).__name__}")
    if next(model.parameters()).device.type != "cpu":
        raise EngineError(f"engine {engine!r} is for CPU models; this one is on "
                          f"{next(model.parameters()).device} (use --engine eager)")
    parts = EngineParts(model, engine, threads or torch.get_num_threads(), directory or cache_dir())
    # The engine owns the cores: torch keeps one thread for the small work around it.
    # Its idle OpenMP workers spin for milliseconds after each op, on the cores the
    # engine's threads need (VAE decode 9.3 -> 7.1 ms measured with one thread).
    torch.set_num_threads(1)
    model.engine_parts = parts
    model.evaluate = parts.evaluate
    model.decode = parts.decode
    model.decode_pictures = parts.decode_pictures
    if parts.prior is not None:  # the one the model streams with; the other (a fallback) stays eager
        setattr(model, "warped_prior" if model.prior_from_shown else "pixel_prior", parts.warped)
    return model
