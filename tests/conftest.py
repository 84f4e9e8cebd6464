"""Test set-up: every test writes under a temporary runs/ folder, never the project's own.

unit/: one module at a time, in memory (synthetic beats, tiny models). integration/: MLflow stores,
studies, the CLI, subprocesses, the real records, the report in a browser. support/: their shared
helpers (`support.tiny`: the tiny configs). pytest puts this folder on sys.path, so tests import
`support.*`.

Markers (setup.cfg), set here so that no test has to: `unit` / `integration` by folder, `records`
on every test using the real MIT-BIH records (the `mitdb` fixture, directly or through another
fixture), `subprocess` on every test that starts processes (its code runs `sys.executable` or
`subprocess`). `make test-fast` runs the unit tests that are neither (`FAST`).
"""
import inspect
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

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs one worker per core: one thread each
    import torch  # noqa: E402
    torch.set_num_threads(1)

SHARED_MITDB = Path(__file__).resolve().parents[2] / "shared" / "mitdb"
SUBPROCESS_CODE = ("subprocess.", "sys.executable")  # code holding these starts processes
PROCESS_FIXTURES = {"chromium", "pg_server"}  # a browser, a PostgreSQL server


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _process_starters(module) -> set[str]:
    """Names of the module's functions that start processes, themselves or through one another."""
    code = {n: _source(f) for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__}
    starters = {n for n, s in code.items() if any(h in s for h in SUBPROCESS_CODE)}
    while True:
        more = {n for n, s in code.items() if n not in starters and any(f"{m}(" in s for m in starters)}
        if not more:
            return starters
        starters |= more


def _starts_processes(item) -> bool:
    """Whether the test starts processes: its code, a helper of its module or a fixture it uses."""
    if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    source = _source(item.function)
    return any(h in source for h in SUBPROCESS_CODE) or any(f"{n}(" in source for n in _process_starters(item.module))


def pytest_collection_modifyitems(config, items):
    """Mark each test by its folder, its use of the real records and of processes (see above)."""
    here = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(here).parts[0]
        if tier in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, tier))
        if "mitdb" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.records)
        if _starts_processes(item):
            item.add_marker(pytest.mark.subprocess)


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
