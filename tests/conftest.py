import hashlib
import os
import random

import numpy as np
import pytest
import torch


# No test may reach the network; the Hub is replaced by a local stand-in where a test needs one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Every test starts from a seed of its own, derived from its id and this base seed: a result never depends on which
# tests ran before, and the whole suite can be re-run under other draws (TRL_SRUM_TEST_SEED=1, 2, ...) to show that
# no assertion holds only by luck.
BASE_SEED = int(os.environ.get("TRL_SRUM_TEST_SEED", "0"))


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis draws its examples from a seed of its own: tie it to the base seed unless --hypothesis-seed is given
    # (the attribute that option sets).
    if config.getoption("hypothesis_seed", None) is None:
        import hypothesis.core

        hypothesis.core.global_force_seed = BASE_SEED


@pytest.fixture(autouse=True)
def seed_everything(request: pytest.FixtureRequest) -> int:
    digest = hashlib.sha256(f"{BASE_SEED}:{request.node.nodeid}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models are all per-op overhead: a second thread only adds waiting on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that executed nothing must not look green (e.g. a mistyped -k, or every test skipped).
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    if exitstatus == 0 and passed == 0 and not session.config.option.collectonly:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
