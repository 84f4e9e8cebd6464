"""Test set-up: every test writes under a temporary runs/ folder, never the project's own.

unit/: one module at a time, in memory (synthetic beats, tiny models). integration/: MLflow stores,
studies, the CLI, subprocesses, the real records, the report in a browser. support/: their shared
helpers (`support.tiny`: the tiny configs). pytest puts this folder on sys.path, so tests import
`support.*`.
"""
import os
import tempfile
from pathlib import Path

import pytest

_RUNS = tempfile.mkdtemp(prefix="ablation-test-runs-")
os.environ["ABLATION_RUNS"] = _RUNS  # read by ablation.paths at import time
os.environ["ABLATION_RESULTS"] = os.path.join(_RUNS, "results")  # never the project's committed results/
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("ABLATION_MITDB", None)
import ablation  # noqa: E402,F401  (pins the CPU kernels before any test module imports torch)

SHARED_MITDB = Path(__file__).resolve().parents[2] / "shared" / "mitdb"


@pytest.fixture(scope="session")
def mitdb() -> Path:
    """The real MIT-BIH records beside the project (CI has them); skip where they are absent."""
    if not (SHARED_MITDB / "100.dat").exists():
        pytest.skip(f"MIT-BIH records not found at {SHARED_MITDB}")
    return SHARED_MITDB


@pytest.fixture(scope="session")
def tracking_store():
    """A fresh MLflow SQLite store under the temporary runs/ folder."""
    from ablation import tracking
    return tracking.setup()


@pytest.fixture(scope="session")
def synthetic():
    """Synthetic beats (not ECG): fast end-to-end checks of the machinery."""
    from ablation.data.synthetic import synthetic_beats
    return synthetic_beats(seed=0)


@pytest.fixture
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a loaded machine."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
