import os
import subprocess
import sys

import pytest
import torch

# Tests run on 2 CPU cores next to other processes: one intra-op thread avoids OpenMP
# spin contention and keeps the suite's runtime predictable.
torch.set_num_threads(1)
os.environ.setdefault("LIVEREEL_TEST", "1")

# A busy loop that ends once the process that started it is gone (it is then re-parented).
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"


def pytest_addoption(parser):
    parser.addoption(
        "--busy-core",
        action="store_true",
        help="keep one CPU core busy (a busy-loop process) while the tests run: the suite "
        "on a machine shared with another job",
    )


def pytest_configure(config):
    if config.getoption("--busy-core"):
        config.busy_core = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def pytest_unconfigure(config):
    busy = getattr(config, "busy_core", None)
    if busy is not None:
        busy.kill()
        busy.wait()


def pytest_report_header(config):
    busy = getattr(config, "busy_core", None)
    return [f"busy core: a busy loop runs in pid {busy.pid}"] if busy is not None else []


@pytest.fixture(scope="session")
def debug_model():
    from model import load_model

    return load_model("debug")
