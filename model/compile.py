"""torch.compile applied to a built model (STYLE: a function applied to a built model; the
model file does not import it).

`compile_dit(model)` compiles each DiT block's two pure halves, `Block.project` (adaLN,
norm, QKV) and `Block.attend` (attention, cross-attention, MLP); the context's verbs
between them (`write`, `read`: the KV cache, plain Python with position state) stay eager.
Measured on the 2-core CPU, default model, 2 threads, A/B interleaved in one process, on
the fused evaluation a chunk makes (`cache.kv.FusedBatch`): the DiT 17.7 -> 15.9 ms (1.11x),
a chunk without decode 1.06x, after 10-30 s of compiling. Compiling the whole
`DiT.forward` instead was slower than eager: 0.60x even with its graph breaks removed (the
cache buffers it writes into are graph inputs); inductor's `freezing` gave 1.00x,
`cpp_wrapper` 1.06x, max-autotune 1.07x. A prototype whose forward reads the cache as
inputs and writes it after returning compiled whole to 1.27x, but only after two minutes
of compiling a graph per cache slot and mask (README, "Performance on 2 CPU cores").
"""

from __future__ import annotations

import torch

from model.checkpoint import LiveReel
from model.sampling import Sampling

RECOMPILE_LIMIT = 64
"""Graphs kept per compiled function. The blocks share theirs (weights are graph inputs),
but each new shape compiles one: streaming vs training path, batch sizes, a mask or none."""


def compile_dit(model: LiveReel) -> LiveReel:
    """Compile the DiT's blocks of `model` in place (first calls compile; later ones reuse
    the graphs, which the blocks share: their weights are inputs); returns the model."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in model.dit.blocks:
        block.project = torch.compile(block.project)
        block.attend = torch.compile(block.attend)
    return model


@torch.no_grad()
def warm_up(model: LiveReel, sampling: Sampling, streams: int = 2) -> None:
    """Meet the shapes a server meets before viewers do (each compiles once): a stream
    until its cache is full (reads with a mask, then without), a prompt switch (the
    re-cache) and batched steps of `streams` streams (fused with their last chunks' context
    passes, or not yet)."""
    from model.generate import next_frames_batch

    d = model.cache_layout()
    gens = [sampling.generator(model, seed=i) for i in range(streams)]
    for _ in range(d.max_frames // d.chunk_frames + 1):
        gens[0].next_frames()
    gens[0].set_prompt("a white star above the city")
    gens[0].next_frames()
    if streams > 1:  # the first without an unwritten chunk for the new streams, then with
        next_frames_batch(gens)
        next_frames_batch(gens)
