import os

import pytest
import torch

# No test may reach the network: the Hub is not reachable from CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mlcvnets_fixtures():
    """Path of ../shared/fixtures/mlcvnets, or skip the test with the reason."""
    from mobilevit.testing_utils import shared_fixtures_dir

    path = shared_fixtures_dir()
    if path is None:
        pytest.skip("../shared/fixtures/mlcvnets not found (set MOBILEVIT_FIXTURES to its path to run this test)")
    return path
