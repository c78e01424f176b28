import os

import pytest
import torch

from tests.helpers import DATA_DIR


def pytest_report_header(config):
    return (f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}, threads {torch.get_num_threads()}")


@pytest.fixture
def data_dir():
    return DATA_DIR


def pytest_collection_modifyitems(config, items):
    # Tests that skip without a GPU are GPU tests: `pytest -m gpu` (bench/gpu_check.sh) selects them.
    for item in items:
        if any(m.name == "skipif" and "GPU" in str(m.kwargs.get("reason", "")) for m in item.iter_markers()):
            item.add_marker(pytest.mark.gpu)
