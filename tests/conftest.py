import os

import pytest
import torch

# Tests run on 2 CPU cores next to other processes: one intra-op thread avoids OpenMP
# spin contention and keeps the suite's runtime predictable.
torch.set_num_threads(1)
os.environ.setdefault("LIVEREEL_TEST", "1")


@pytest.fixture(scope="session")
def debug_model():
    from model import load_model

    return load_model("debug")
