"""model/snapshot.py: a stream saved between chunks and loaded (in the same process here;
tests/test_cluster.py does it across workers) makes the chunks the saved one makes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from model import snapshot
from model.sampling import Sampling


def _drive(gen, chunks: int, first: int) -> list[np.ndarray]:
    """`chunks` chunks with the same controls whatever the starting chunk `first`: a
    prompt switch at chunk 4, a pan from chunk 5."""
    frames = []
    for c in range(first, first + chunks):
        if c == 4:
            gen.set_prompt("a snowy forest at night")
        if c == 5:
            gen.set_camera(pan=(0.4, -0.1))
        frames.append(gen.next_frames())
    return frames


@pytest.mark.parametrize("warm_start", [0, 3])
def test_a_loaded_snapshot_makes_the_same_frames(debug_model, warm_start):
    sampling = Sampling(steps=4, warm_start=warm_start)
    gen = sampling.generator(debug_model, seed=11)
    gen.set_prompt("a red ball bouncing over a meadow")
    gen.set_camera(pan=(0.2, 0.0))
    _drive(gen, 3, 1)
    assert gen.unwritten is not None  # the last chunk's context pass is still to come (fused)
    data = snapshot.save(gen)
    loaded = snapshot.load(debug_model, data)
    assert loaded is not gen and loaded.cache.k is not gen.cache.k
    # the loaded stream's cache views are views of its own tables (not copies)
    assert loaded.cache._cur_rope[0].untyped_storage().data_ptr() == loaded.cache.cos.untyped_storage().data_ptr()
    want = _drive(gen, 4, 4)
    got = _drive(loaded, 4, 4)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert loaded.prompt == gen.prompt == "a snowy forest at night"


def test_snapshots_stay_apart_and_a_second_load_is_fresh(debug_model):
    gen = Sampling(steps=2, warm_start=1).generator(debug_model, seed=3)
    gen.next_frames()
    data = snapshot.save(gen)
    a, b = snapshot.load(debug_model, data), snapshot.load(debug_model, data)
    fa, fb = a.next_frames(), b.next_frames()
    np.testing.assert_array_equal(fa, fb)  # loading twice: two independent streams
    np.testing.assert_array_equal(fa, gen.next_frames())


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/livereel-snapshot-pwned",))


def test_a_snapshot_that_names_code_is_refused_not_run(debug_model, tmp_path):
    if os.path.exists("/tmp/livereel-snapshot-pwned"):
        os.remove("/tmp/livereel-snapshot-pwned")
    path = tmp_path / "evil.pt"
    torch.save({"version": 1, "class": "Generator", "state": {"x": _Payload()}}, path)
    with pytest.raises(ValueError, match="not a livereel stream snapshot"):
        snapshot.load(debug_model, path.read_bytes())
    assert not os.path.exists("/tmp/livereel-snapshot-pwned")
    with pytest.raises(ValueError, match="not a livereel stream snapshot"):
        snapshot.load(debug_model, pickle.dumps({"version": 1}))
    with pytest.raises(ValueError, match="not a livereel stream snapshot"):
        snapshot.load(debug_model, b"\x00garbage")


@torch.no_grad()
def test_a_wan_stream_snapshot_goes_on_with_the_same_latents():
    pytest.importorskip("diffusers")
    from model.wan.model import wan_generator
    from tests.test_wan_dit import pair as make_pair
    from tests.test_wan_generate import wan

    _, ours = make_pair.__wrapped__()
    model = wan(ours)
    gen = wan_generator(model, seed=5)
    gen.set_prompt("a cat")
    for _ in range(3):  # past the window: chunks evicted, the sink kept
        gen.step()
    loaded = snapshot.load(model, snapshot.save(gen))
    for g in (gen, loaded):
        g.set_prompt("a dog")  # a re-cache of the kept chunks from the saved latents
    for _ in range(2):
        torch.testing.assert_close(loaded.step(), gen.step(), rtol=0, atol=0)


def test_loads_on_several_threads_at_once(debug_model):
    """Two restores at once (two sessions of a failed worker) load on two threads."""
    from concurrent.futures import ThreadPoolExecutor

    gen = Sampling(steps=2, warm_start=1).generator(debug_model, seed=1)
    gen.next_frames()
    data = snapshot.save(gen)
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: snapshot.load(debug_model, data), range(16)))
    assert all(g.chunk_index == 1 for g in loaded)
