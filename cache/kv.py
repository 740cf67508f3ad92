"""The self-attention KV cache: preallocated, fixed capacity, positions by slot order.

Token slots, the same for every layer:

    [ sink | memory (pooled) | window ring | current chunk ]

- The layout (depth, heads, head dim, tokens per frame, the regions' sizes, the position
  mode) is a `CacheLayout`, which each model family derives from its own config: the
  cache knows no network.
- Keys are stored before RoPE (`k`) and rotated once per chunk for the current read
  (`k_rot`) by the family's `rope_tables`, with spatial positions re-centred on the
  current camera and temporal positions by the layout's mode: "slot", the rank of each
  frame among the visible ones (so they never exceed `max_frames - 1`, however long the
  stream), or "absolute", the frame's index in the stream (what models trained with
  keys cached after RoPE saw; past `max_positions` a read is refused with
  `PositionLimitError`).
- The chunk in flight writes its K/V into the last region at every network
  evaluation; `commit()` then moves its clean K/V (from the context pass) into the sink
  or the window ring, pooling the window's oldest chunk into the memory bank first.
- A frame is visible to the chunk in flight when its id is lower: the rule that makes
  both normal generation and the re-cache of kept chunks causal.
- The last latent frame committed in stream order, and its camera, are kept too: the
  source of the next chunk's warped prior (`DiTConfig.warp_prior`; `prior` is set by
  `DiT.begin_chunk`). The chunk in flight writes its last frame at every evaluation,
  like its K/V, and `commit()` keeps the final (clean) one.
- With the memory on, a spatial memory too (`remember`): pictures the viewer was shown and
  the camera that saw each, one per spot. A prior fills the ground its camera uncovers
  from them (`LiveReel.begin_chunk`): a view revisited shows what it showed.

Capacity is fixed at construction; the position state is plain Python (no host syncs).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cache.memory import MemoryBank, compress_chunk
from model.ops import apply_rope

RopeTables = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
PLACES = 32  # pictures in the spatial memory (`KVCache.remember`): ~6 MB a stream at 128 px


class PositionLimitError(ValueError):
    """A stream in "absolute" position mode reached the end of its model's trained
    positions."""


@dataclass(frozen=True)
class CacheLayout:
    """What a KV cache holds, in frames (latent frames) and tokens.

    Regions in token order: `sink_frames` (the stream's first frames, kept), the memory
    bank (`memory_frames` evicted frames pooled `memory_pool` x `memory_pool`, on a token
    grid of `grid` = (rows, cols) per frame), the window ring (`window_frames`), and the
    chunk in flight (`chunk_frames`). `latent` (C, h, w) is a latent frame's shape (the
    cache keeps the last one committed: the warped prior's source)."""

    depth: int
    heads: int
    head_dim: int
    chunk_frames: int
    grid: tuple[int, int]
    sink_frames: int
    window_frames: int
    latent: tuple[int, int, int]
    memory_frames: int = 0
    memory_pool: int = 1
    positions: str = "slot"
    max_positions: int | None = None  # "absolute": temporal positions 0 .. max_positions - 1

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"CacheLayout: {msg} ({self})")

        check(min(self.depth, self.heads, self.head_dim, self.chunk_frames, self.window_frames) > 0,
              "depth, heads, head_dim, chunk_frames and window_frames must be positive")
        check(self.head_dim % 2 == 0, "head_dim must be even")
        check(min(self.sink_frames, self.memory_frames) >= 0, "sink and memory frames must be >= 0")
        for n in (self.sink_frames, self.window_frames, self.memory_frames):
            check(n % self.chunk_frames == 0, "regions must hold whole chunks")
        check(self.positions in ("slot", "absolute"), "positions must be 'slot' or 'absolute'")
        check(self.memory_frames == 0 or all(g % self.memory_pool == 0 for g in self.grid),
              "memory_pool must divide the token grid")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens_per_chunk(self) -> int:
        return self.chunk_frames * self.tokens_per_frame

    @property
    def memory_tokens_per_frame(self) -> int:
        return (self.grid[0] // self.memory_pool) * (self.grid[1] // self.memory_pool)

    @property
    def max_frames(self) -> int:
        """Frame slots: sink, memory, window and the chunk in flight."""
        return self.sink_frames + self.memory_frames + self.window_frames + self.chunk_frames

    @property
    def cache_tokens(self) -> int:
        return ((self.sink_frames + self.window_frames + self.chunk_frames) * self.tokens_per_frame
                + self.memory_frames * self.memory_tokens_per_frame)

    def nbytes(self, rows: int = 1, element_size: int = 4) -> int:
        """Bytes a KVCache of `rows` rows holds (keys, values, rotated keys; its small
        position and RoPE tables aside): fixed at construction, however long the stream."""
        return 3 * self.depth * rows * self.heads * self.cache_tokens * self.head_dim * element_size


@dataclass(frozen=True)
class Region:
    """A run of chunk slots: `chunks` chunks of `frames` frames, `tokens` tokens each."""

    name: str
    token_start: int
    frame_start: int
    chunks: int
    frames: int  # frames per chunk
    tokens: int  # tokens per chunk

    def token_slice(self, i: int) -> slice:
        s = self.token_start + i * self.tokens
        return slice(s, s + self.tokens)

    def frame_range(self, i: int) -> range:
        s = self.frame_start + i * self.frames
        return range(s, s + self.frames)

    @property
    def token_end(self) -> int:
        return self.token_start + self.chunks * self.tokens


@dataclass(frozen=True)
class FlatRead:
    """A context's read as plain tensors, for an evaluation run as one graph by an inference
    engine (model/engine.py), which cannot call the verbs between layers. Rows attend to
    [the read's other slots where `visible` | the `link` row's new K/V where `linked` |
    their own new K/V]: attention does not depend on the order of its keys, so this equals
    the verbs' in-place writes. The link is what a `FusedBatch` writes across rows: a next
    chunk's read of the slot its stream's deferred chunk was just committed to."""

    k_rot: Tensor  # (depth, R, H, N, Dh) rotated keys; the chunk in flight's slot (last) unread
    v: Tensor  # (depth, R, H, N, Dh)
    visible: Tensor  # (R, N - tokens_per_chunk) bool
    cos: Tensor  # (R, 1, tokens_per_chunk, Dh) the chunk in flight's RoPE tables
    sin: Tensor
    link: Tensor  # (R,) int64: the row whose new K/V this row also attends to
    linked: Tensor  # (R,) bool
    link_cos: Tensor  # (R, 1, tokens_per_chunk, Dh) tables of the linked K/V in this row's read
    link_sin: Tensor
    prior: Tensor | None


def flat_read(k_rot: Tensor, v: Tensor, mask: Tensor | None, cur: slice, cos: Tensor, sin: Tensor,
              prior: Tensor | None) -> FlatRead:
    """A `FlatRead` without links from a read with visibility `mask` ((R | 1, 1, 1, N) or None)."""
    R, N = k_rot.shape[1], k_rot.shape[3]
    assert cur.stop == N, "the chunk in flight's slot is the read's last"
    visible = (torch.ones(R, cur.start, dtype=torch.bool, device=k_rot.device) if mask is None
               else mask.reshape(-1, N)[:, :cur.start].expand(R, -1).clone())
    return FlatRead(k_rot, v, visible, cos, sin, torch.zeros(R, dtype=torch.long, device=k_rot.device),
                    torch.zeros(R, dtype=torch.bool, device=k_rot.device), torch.ones_like(cos),
                    torch.zeros_like(sin), prior)


def group_read(reads: list[tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor | None]], cur: slice
               ) -> FlatRead:
    """One `FlatRead` of several reads' rows, each (k_rot, v, mask, cos, sin, prior); a
    single read is used as it is (no copy: the engine reads the cache's own buffers)."""
    parts = [flat_read(k, v, mask, cur, cos, sin, prior) for k, v, mask, cos, sin, prior in reads]
    if len(parts) == 1:
        return parts[0]
    rows = {"k_rot": 1, "v": 1}  # the rows' dimension of each field (0 where not named)
    return FlatRead(**{f.name: None if getattr(parts[0], f.name) is None else
                       torch.cat([getattr(p, f.name) for p in parts], rows.get(f.name, 0))
                       for f in dataclasses.fields(FlatRead)})


@dataclass(frozen=True)
class ReadView:
    """A copy of a cache's read for one chunk: what that chunk's evaluations attend to."""

    k_rot: Tensor  # (depth, B, H, N, Dh) keys rotated for this read
    v: Tensor  # (depth, B, H, N, Dh)
    mask: Tensor | None  # (1, 1, 1, N) visibility, None: all
    cos: Tensor  # (B, 1, tokens_per_chunk, Dh) the chunk's own RoPE tables
    sin: Tensor
    prior: Tensor | None  # (B, chunk_frames, C + 1, h, w) its warped prior


class KVCache:
    # what its stream was last asked for (the Generator sets it; a model's object hint reads
    # it); a class default, so a cache restored from an older snapshot has it too
    prompt: str = ""

    def __init__(self, layout: CacheLayout, batch: int = 1, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, memory: bool = True):
        """`layout`: a `CacheLayout`, or a family's config that makes one (`cache_layout()`).
        `memory=False` switches the memory bank off (evicted chunks are dropped, the
        memory slots stay invisible): the ablation the revisit eval compares against."""
        cfg = layout if isinstance(layout, CacheLayout) else layout.cache_layout()
        self.layout = cfg
        self.use_memory = memory
        K, T = cfg.chunk_frames, cfg.tokens_per_frame
        regions, tok, fr = [], 0, 0
        for name, chunks, tokens in (("sink", cfg.sink_frames // K, K * T),
                                     ("memory", cfg.memory_frames // K, K * cfg.memory_tokens_per_frame),
                                     ("window", cfg.window_frames // K, K * T),
                                     ("current", 1, K * T)):
            regions.append(Region(name, tok, fr, chunks, K, tokens))
            tok, fr = tok + chunks * tokens, fr + chunks * K
        self.sink, self.memory, self.window, self.current = regions
        self.regions = {r.name: r for r in regions}
        assert tok == cfg.cache_tokens and fr == cfg.max_frames
        self.n_tokens, self.n_frames = tok, fr

        shape = (cfg.depth, batch, cfg.heads, tok, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # keys before RoPE
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.k_rot = torch.zeros(shape, device=device, dtype=dtype)  # keys for the current read
        self.pos = torch.zeros(batch, tok, 2, device=device, dtype=dtype)  # world (x, y), tokens
        self.cos = torch.zeros(batch, tok, cfg.head_dim, device=device, dtype=dtype)
        self.sin = torch.zeros(batch, tok, cfg.head_dim, device=device, dtype=dtype)
        cur = self.current.token_slice(0)  # the chunk in flight's tables, (B, 1, tokens, Dh) views
        self._cur_rope = (self.cos[:, None, cur], self.sin[:, None, cur])
        token_frame = torch.cat([
            torch.arange(r.frame_start, r.frame_start + r.chunks * K).repeat_interleave(r.tokens // K)
            for r in regions])
        self.token_frame = token_frame.to(device)  # (N,) frame slot of every token slot

        latent = (batch, *cfg.latent)
        self.frame = torch.zeros(latent, device=device, dtype=dtype)  # last committed frame
        self.frame_pos = torch.zeros(batch, 3, device=device, dtype=dtype)  # its camera
        self.frame_valid = torch.zeros(batch, device=device, dtype=dtype)  # 0 before the first
        self._pending = (torch.zeros_like(self.frame), torch.zeros_like(self.frame_pos))
        self.prior: Tensor | None = None  # (B, chunk_frames, C + 1, h, w), per chunk
        # the last frames of the latest chunks as the viewer was shown them, (latent frame
        # (S, C, h, w), picture (S, 3, H, W)), newest last (`show`): a pixel-space prior
        # warps the picture of `frame` instead of decoding it again (model/prior.py), a
        # re-cache those of the kept chunks' frames before them
        self.shown: list[tuple[Tensor, Tensor]] = []
        self._keep_shown = cfg.sink_frames // K + cfg.window_frames // K + 1
        # the spatial memory (with `memory`): pictures shown and the camera that saw them,
        # (picture (S, 3, H, W), camera (S, 3)), newest last, at most PLACES, one per spot
        # (`remember`): a prior fills the ground the camera uncovers from them
        # (`LiveReel.begin_chunk`), so that a view revisited shows what it showed
        self.places: list[tuple[Tensor, Tensor]] = []

        self.bank = MemoryBank(cfg.memory_frames // K)
        self.frame_ids: list[int] = [-1] * fr  # stream frame index held by each frame slot
        self.chunks_written = 0
        self.max_time_position = 0  # the largest temporal position any read has used
        self.mask: Tensor | None = None  # (1, 1, 1, N) visibility for the current read

    # ------------------------------------------------------------------ reads
    def begin_chunk(self, cur_pos: Tensor, center: Tensor, rope_tables: RopeTables,
                    first_frame: int | None = None) -> None:
        """Prepare a read for the chunk in flight, once per chunk.

        cur_pos: (B, tokens_per_chunk, 2) world positions of its tokens; center: (B, 2)
        the camera to re-centre on; first_frame: the chunk's stream frame index (default:
        the next one). Rotates the visible context keys for all layers at once.
        Raises PositionLimitError (changing nothing) when an "absolute" layout's positions
        would pass `max_positions`.
        """
        layout, K = self.layout, self.layout.chunk_frames
        first = self.chunks_written * K if first_frame is None else first_frame
        absolute = layout.positions == "absolute"
        if absolute and layout.max_positions is not None and first + K > layout.max_positions:
            raise PositionLimitError(
                f"this model was trained with absolute frame positions up to {layout.max_positions} "
                f"latent frames; the stream has reached frame {first}. Use slot positions "
                "(--positions slot, e.g. the longlive-infinity recipe) for streams without an end")
        cur = self.current
        for j, f in enumerate(cur.frame_range(0)):
            self.frame_ids[f] = first + j
        visible = [0 <= i < first or f in cur.frame_range(0) for f, i in enumerate(self.frame_ids)]
        order = sorted(i for i, vis in zip(self.frame_ids, visible) if vis)
        rank = {i: (i if absolute else r) for r, i in enumerate(order)}
        frame_time = [float(rank.get(i, 0)) for i in self.frame_ids]
        self.max_time_position = max(self.max_time_position, max(rank.values()))

        time = torch.tensor(frame_time, device=self.pos.device, dtype=self.pos.dtype)
        time = time[self.token_frame].expand(self.pos.shape[0], -1)
        self.pos[:, cur.token_slice(0)] = cur_pos
        cos, sin = rope_tables(time, self.pos - center[:, None])
        self.cos.copy_(cos)
        self.sin.copy_(sin)
        ctx = slice(0, cur.token_start)
        apply_rope(self.k[:, :, :, ctx], self.cos[None, :, None, ctx], self.sin[None, :, None, ctx],
                   out=self.k_rot[:, :, :, ctx])
        if all(visible):
            self.mask = None
        else:
            vis = torch.tensor(visible, device=self.pos.device)[self.token_frame]
            self.mask = vis.view(1, 1, 1, -1)

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Store the chunk in flight's K (before RoPE) and V, (B, H, tokens_per_chunk, Dh)."""
        cur = self.current.token_slice(0)
        self.store(layer, k, v)
        apply_rope(k, *self._cur_rope, out=self.k_rot[layer, :, :, cur])

    def store(self, layer: int, k: Tensor, v: Tensor) -> None:
        """`write` without the rotated copy (a `CacheBatch` keeps that itself)."""
        cur = self.current.token_slice(0)
        self.k[layer, :, :, cur] = k
        self.v[layer, :, :, cur] = v

    def flat_reads(self) -> tuple[FlatRead | None, FlatRead]:
        """The read as plain tensors (model/engine.py): (deferred rows' read: none here, this one)."""
        cos, sin = self._cur_rope
        return None, flat_read(self.k_rot, self.v, self.mask, self.current.token_slice(0), cos, sin, self.prior)

    def write_layers(self, k: Tensor, v: Tensor) -> None:
        """`store` for every layer at once: k, v (depth, B, H, tokens_per_chunk, Dh). (The
        rotated copy `write` keeps is read by no one after the evaluation: the commit moves
        k and v, and the next read rotates them.)"""
        cur = self.current.token_slice(0)
        self.k[:, :, :, cur] = k
        self.v[:, :, :, cur] = v

    def write_frame(self, frame: Tensor, pos: Tensor) -> None:
        """The chunk in flight's last latent frame (B, C, h, w) and camera (B, 3)."""
        self._pending[0].copy_(frame)
        self._pending[1].copy_(pos)

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Keys (rotated), values and the visibility mask for one layer's attention."""
        return self.k_rot[layer], self.v[layer], self.mask

    def current_rope(self) -> tuple[Tensor, Tensor]:
        """cos, sin (B, 1, tokens_per_chunk, Dh) for the queries of the chunk in flight."""
        return self._cur_rope

    def read_view(self) -> ReadView:
        """A copy of the current read, which the next `commit` and `begin_chunk` change: what
        a context pass of the chunk in flight still needs once they ran (`FusedBatch`)."""
        return ReadView(self.k_rot.clone(), self.v.clone(), self.mask, self._cur_rope[0].clone(),
                        self._cur_rope[1].clone(), self.prior)

    # ------------------------------------------------------------------ writes
    def commit(self, dest: tuple[str, int] | None = None) -> tuple[str, int]:
        """Move the chunk in flight into its slot; returns (region, index) it went to.

        With `dest=None` the next slot in stream order: the sink while it fills, then the
        window ring, whose oldest chunk is first pooled into the memory bank. An explicit
        `dest` rewrites a kept chunk in place (re-cache), with no eviction.
        """
        if dest is None:
            i = self.chunks_written
            if i < self.sink.chunks:
                dest = ("sink", i)
            else:
                w = (i - self.sink.chunks) % self.window.chunks
                if i - self.sink.chunks >= self.window.chunks:
                    self._evict(w)
                dest = ("window", w)
            self.chunks_written += 1
            self.frame.copy_(self._pending[0])
            self.frame_pos.copy_(self._pending[1])
            self.frame_valid.fill_(1.0)
        region = self.regions[dest[0]]
        self._copy(self.current, 0, region, dest[1])
        return dest

    def _copy(self, src: Region, i: int, dst: Region, j: int) -> None:
        s, d = src.token_slice(i), dst.token_slice(j)
        self.k[:, :, :, d] = self.k[:, :, :, s]
        self.v[:, :, :, d] = self.v[:, :, :, s]
        self.pos[:, d] = self.pos[:, s]
        for fs, fd in zip(src.frame_range(i), dst.frame_range(j)):
            self.frame_ids[fd] = self.frame_ids[fs]

    def _evict(self, w: int) -> None:
        """Pool window chunk `w` into the memory bank (or drop it when there is none)."""
        slot = self.bank.next_slot() if self.use_memory else None
        src = self.window.token_slice(w)
        if slot is not None:
            cfg = self.layout
            k, v, pos = compress_chunk(self.k[:, :, :, src], self.v[:, :, :, src], self.pos[:, src],
                                       cfg.chunk_frames, cfg.grid, cfg.memory_pool)
            d = self.memory.token_slice(slot)
            self.k[:, :, :, d] = k
            self.v[:, :, :, d] = v
            self.pos[:, d] = pos
            for fs, fd in zip(self.window.frame_range(w), self.memory.frame_range(slot)):
                self.frame_ids[fd] = self.frame_ids[fs]
            self.bank.advance()
        for f in self.window.frame_range(w):
            self.frame_ids[f] = -1

    # ------------------------------------------------------------------ state
    def kept_chunks(self) -> list[tuple[str, int]]:
        """Sink and window chunks (those with exact K/V) in stream order: what a re-cache redoes."""
        kept = [(r.name, i) for r in (self.sink, self.window) for i in range(r.chunks)
                if self.frame_ids[r.frame_range(i)[0]] >= 0]
        return sorted(kept, key=lambda s: self.frame_ids[self.regions[s[0]].frame_range(s[1])[0]])

    def first_frame(self, region: str, index: int) -> int:
        return self.frame_ids[self.regions[region].frame_range(index)[0]]

    def positions(self, region: str, index: int) -> Tensor:
        """World positions (B, tokens, 2) of a chunk slot."""
        return self.pos[:, self.regions[region].token_slice(index)]

    def show(self, frame: Tensor, picture: Tensor) -> None:
        """The last latent frame of a chunk (S, C, h, w) and its picture as shown (S, 3, H, W)."""
        self.shown = [*self.shown[1 - self._keep_shown:], (frame, picture)]

    def remember(self, picture: Tensor, pos: Tensor) -> None:
        """Keep the picture shown (S, 3, H, W) of camera `pos` (S, 3) in the spatial memory
        (with `memory` only): one place per spot (a cell a quarter of the view wide and a
        quarter octave of zoom deep: the latest picture there replaces the one before), the
        oldest dropped beyond PLACES."""
        if not self.use_memory:
            return
        grid = max(self.layout.grid)

        def spot(p: Tensor) -> tuple[int, int, int]:
            x, y, zoom = (float(v) for v in p[0])
            cell = grid * 2.0 ** -zoom / 4  # a quarter of the view's width, in tokens
            return round(x / cell), round(y / cell), round(4 * zoom)

        here = spot(pos)
        self.places = [p for p in self.places if spot(p[1]) != here][1 - PLACES:] + [(picture, pos.clone())]

    def forget_places(self) -> None:
        """Empty the spatial memory (a new prompt: the places show the old one)."""
        self.places = []

    def shown_picture(self, frame: Tensor) -> Tensor | None:
        """The picture shown of latent frame `frame` (S, C, h, w), if it was among the latest."""
        for latent, picture in reversed(self.shown):
            if latent.shape == frame.shape and torch.equal(latent, frame):
                return picture
        return None

    def frame_state(self) -> tuple[Tensor, Tensor, Tensor]:
        """A copy of the last frame, its camera and validity (to restore after a re-cache)."""
        return self.frame.clone(), self.frame_pos.clone(), self.frame_valid.clone()

    def load_frame_state(self, state: tuple[Tensor, Tensor, Tensor]) -> None:
        for dst, src in zip((self.frame, self.frame_pos, self.frame_valid), state):
            dst.copy_(src)

    def rebase(self, offset: Tensor) -> None:
        """Shift every stored world position by -offset (B, 2), to keep them small."""
        self.pos -= offset[:, None]
        self.frame_pos[:, :2] -= offset
        for _, pos in self.places:
            pos[:, :2] -= offset[:pos.shape[0]]

    def reset(self) -> None:
        self.frame_ids = [-1] * self.n_frames
        self.chunks_written = 0
        self.bank.reset()
        self.mask = None
        self.frame_valid.zero_()
        self.prior = None
        self.shown = []
        self.places = []

    def allocated_bytes(self) -> int:
        """Bytes the cache holds: its buffers, the chunk pending commit and the pictures
        shown that a prior may warp (`show`, bounded by the window; `remember`, by PLACES)."""
        shown = [t for pair in self.shown + self.places for t in pair]
        return sum(t.numel() * t.element_size()
                   for t in (self.k, self.v, self.k_rot, self.pos, self.cos, self.sin, self.frame,
                             *self._pending, *shown))


class CacheBatch:
    """Several streams' caches read as one batch: the context of a batched step.

    Made after every cache's `begin_chunk`, it gathers their rotated keys, values,
    current-chunk RoPE tables and visibility masks into batch buffers once per chunk (the
    context is the same for all the chunk's evaluations). `write` updates the batch
    buffers and stores each stream's own K/V, so that each cache's `commit` follows as
    usual. The same verbs as `KVCache`, so the DiT cannot tell the two apart.
    """

    def __init__(self, caches: list[KVCache]):
        self.caches = caches
        self.rows = [c.k.shape[1] for c in caches]
        self.cur = caches[0].current.token_slice(0)
        self.k_rot = torch.cat([c.k_rot for c in caches], dim=1)  # (depth, B, H, N, Dh)
        self.v = torch.cat([c.v for c in caches], dim=1)
        self.cos = torch.cat([c.cos[:, None, self.cur] for c in caches])  # (B, 1, tokens, Dh)
        self.sin = torch.cat([c.sin[:, None, self.cur] for c in caches])
        self.prior = torch.cat([c.prior for c in caches]) if caches[0].prior is not None else None
        self.mask: Tensor | None = None
        if any(c.mask is not None for c in caches):
            n = caches[0].n_tokens
            self.mask = torch.cat([
                (c.mask if c.mask is not None else torch.ones(n, dtype=torch.bool, device=c.k.device)
                 ).view(1, 1, 1, n).expand(rows, 1, 1, n) for c, rows in zip(caches, self.rows)])

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        for cache, kk, vv in zip(self.caches, k.split(self.rows), v.split(self.rows)):
            cache.store(layer, kk, vv)
        self.v[layer, :, :, self.cur] = v
        apply_rope(k, self.cos, self.sin, out=self.k_rot[layer, :, :, self.cur])

    def write_frame(self, frame: Tensor, pos: Tensor) -> None:
        for cache, f, p in zip(self.caches, frame.split(self.rows), pos.split(self.rows)):
            cache.write_frame(f, p)

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.k_rot[layer], self.v[layer], self.mask

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin

    def flat_reads(self) -> tuple[FlatRead | None, FlatRead]:
        return None, flat_read(self.k_rot, self.v, self.mask, self.cur, self.cos, self.sin, self.prior)

    def write_layers(self, k: Tensor, v: Tensor) -> None:
        """`write` for every layer at once: k, v (depth, B, H, tokens_per_chunk, Dh)."""
        for cache, kk, vv in zip(self.caches, k.split(self.rows, 1), v.split(self.rows, 1)):
            cache.k[:, :, :, self.cur] = kk
            cache.v[:, :, :, self.cur] = vv


class FusedBatch:
    """One evaluation that is both the context pass of chunks just made and the first
    denoising evaluation of the chunks after them: twice the rows, half the evaluations.

    Rows: first the deferred context passes, each attending to the read its chunk was
    made with (`ReadView`, copied before the cache committed the chunk with placeholder
    K/V, evicting as usual), then the next chunks, attending to their caches' current
    read. `write` puts a deferred row's K/V where the commit put its chunk (the slot
    given with its view), in the cache and rotated into the next chunk's read of that
    slot, before that read is used in the same layer; the next chunks' K/V go where
    `KVCache.write` puts them. So every row attends to exactly what it would in two
    separate evaluations.
    The same verbs as `KVCache`, so the DiT cannot tell them apart.
    """

    def __init__(self, deferred: list[tuple[KVCache, ReadView, tuple[str, int]]], caches: list[KVCache]):
        self.caches = caches
        self.rows = [c.k.shape[1] for c in caches]
        self.cur = caches[0].current.token_slice(0)
        views = [view for _, view, _ in deferred]
        self.n_deferred = sum(view.k_rot.shape[1] for view in views)
        offsets = [sum(self.rows[:i]) for i in range(len(caches))]
        # (cache, its rows among the deferred ones, its rows among the next, its slot's tokens)
        self.targets, row = [], 0
        for cache, view, (region, index) in deferred:
            b = view.k_rot.shape[1]
            new = self.n_deferred + offsets[next(i for i, c in enumerate(caches) if c is cache)]
            self.targets.append((cache, slice(row, row + b), slice(new, new + b),
                                 cache.regions[region].token_slice(index)))
            row += b
        self.views = views
        priors = [v.prior for v in views] + [c.prior for c in caches]
        self.prior = None if priors[0] is None else torch.cat(priors)

    # the batch's own read, made on first use (an engine reads `flat_reads` instead)
    @functools.cached_property
    def k_rot(self) -> Tensor:
        return torch.cat([v.k_rot for v in self.views] + [c.k_rot for c in self.caches], dim=1)

    @functools.cached_property
    def v(self) -> Tensor:
        return torch.cat([v.v for v in self.views] + [c.v for c in self.caches], dim=1)

    @functools.cached_property
    def cos(self) -> Tensor:
        return torch.cat([v.cos for v in self.views] + [c.cos[:, None, self.cur] for c in self.caches])

    @functools.cached_property
    def sin(self) -> Tensor:
        return torch.cat([v.sin for v in self.views] + [c.sin[:, None, self.cur] for c in self.caches])

    @functools.cached_property
    def mask(self) -> Tensor | None:
        masks = [(v.mask, v.k_rot.shape[1]) for v in self.views] + [(c.mask, r) for c, r in zip(self.caches, self.rows)]
        if all(m is None for m, _ in masks):
            return None
        n = self.caches[0].n_tokens
        ones = torch.ones(n, dtype=torch.bool, device=self.caches[0].k.device)
        return torch.cat([(ones if m is None else m).view(1, 1, 1, n).expand(r, 1, 1, n) for m, r in masks])

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        n, cur = self.n_deferred, self.cur
        self.v[layer, :, :, cur] = v
        apply_rope(k, self.cos, self.sin, out=self.k_rot[layer, :, :, cur])
        for cache, old, new, slot in self.targets:  # the deferred chunks' clean K/V, in place
            kk, vv = k[old], v[old]
            cache.k[layer, :, :, slot] = kk
            cache.v[layer, :, :, slot] = vv
            self.v[layer, new, :, slot] = vv
            rot = apply_rope(kk, cache.cos[:, None, slot], cache.sin[:, None, slot],
                             out=self.k_rot[layer, new, :, slot])
            cache.k_rot[layer, :, :, slot] = rot  # the cache's own read, for later evaluations
        for cache, kk, vv in zip(self.caches, k[n:].split(self.rows), v[n:].split(self.rows)):
            cache.store(layer, kk, vv)  # for the commit (each evaluation writes its own read)

    def write_frame(self, frame: Tensor, pos: Tensor) -> None:
        n = self.n_deferred
        for cache, f, p in zip(self.caches, frame[n:].split(self.rows), pos[n:].split(self.rows)):
            cache.write_frame(f, p)

    def flat_reads(self) -> tuple[FlatRead | None, FlatRead]:
        """The deferred rows' reads (their views), and the next rows' (their caches' own),
        with the deferred chunks' slots hidden from the next rows and linked to the deferred
        rows instead (their new K/V, rotated as the next read has that slot). No copy of a
        single stream's reads."""
        cur = self.cur
        deferred = None
        if self.views:
            deferred = group_read([(v.k_rot, v.v, v.mask, v.cos, v.sin, v.prior) for v in self.views], cur)
        r = group_read([(c.k_rot, c.v, c.mask, c.cos[:, None, cur], c.sin[:, None, cur], c.prior)
                        for c in self.caches], cur)
        for cache, old, new, slot in self.targets:  # (flat_read's visibility and links are new tensors)
            new = slice(new.start - self.n_deferred, new.stop - self.n_deferred)
            r.visible[new, slot] = False
            r.link[new] = torch.arange(old.start, old.stop, device=r.link.device)
            r.linked[new] = True
            r.link_cos[new], r.link_sin[new] = cache.cos[:, None, slot], cache.sin[:, None, slot]
        return deferred, r

    def write_layers(self, k: Tensor, v: Tensor) -> None:
        """`write` for every layer at once: k, v (depth, B, H, tokens_per_chunk, Dh)."""
        n, cur = self.n_deferred, self.cur
        for cache, old, _, slot in self.targets:
            kk = k[:, old]
            cache.k[:, :, :, slot] = kk
            cache.v[:, :, :, slot] = v[:, old]
            apply_rope(kk, cache.cos[None, :, None, slot], cache.sin[None, :, None, slot],
                       out=cache.k_rot[:, :, :, slot])
        for cache, kk, vv in zip(self.caches, k[:, n:].split(self.rows, 1), v[:, n:].split(self.rows, 1)):
            cache.k[:, :, :, cur] = kk
            cache.v[:, :, :, cur] = vv

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.k_rot[layer], self.v[layer], self.mask

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin
