"""The compiled DiT makes the same chunks as the eager one (model/compile.py)."""

import torch

from model import load_model
from model.compile import compile_dit
from model.sampling import Sampling


@torch.no_grad()
def test_compiled_blocks_make_the_same_chunks():
    from torch._dynamo.utils import counters

    counters.clear()
    eager, compiled = load_model("debug"), compile_dit(load_model("debug"))
    out = []
    for model in (eager, compiled):
        gen = Sampling(steps=2, warm_start=1).generator(model, seed=4)
        gen.set_prompt("a red ball bouncing over the desert")
        gen.set_camera(pan=(0.5, 0.0))
        chunks = [gen.step() for _ in range(8)]  # past the window: the memory bank and a full cache
        gen.set_prompt("a white star above the city")  # a re-cache
        chunks += [gen.step() for _ in range(2)]
        out.append(torch.cat(chunks, 1))
    assert torch.allclose(out[0], out[1], rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]  # compiled, whole
    assert not torch.equal(out[0], torch.zeros_like(out[0]))
