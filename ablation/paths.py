"""Where the project keeps its state: local state under `runs/` (git-ignored), and the results that
outlive a machine under `results/` (committed).

`ABLATION_RUNS` and `ABLATION_RESULTS` move them elsewhere (tests point both at a temporary folder).
"""
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("ABLATION_RUNS", PROJECT_ROOT / "runs")).resolve()
RESULTS = Path(os.environ.get("ABLATION_RESULTS", PROJECT_ROOT / "results")).resolve()
DASHBOARDS = PROJECT_ROOT / "dashboards"  # report pages (their .html and .csv are git-ignored)


def replace_csv(path: Path, frame) -> None:
    """Write the DataFrame `frame` to `path` at once (a temporary file renamed over it: no reader of
    a results/ table sees half of one). Floats keep six significant digits; a float column of whole
    numbers (a count with gaps, e.g. a baseline's missing `teacher_params`) is written exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _counts_exact(frame).to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def _counts_exact(frame):
    """`frame` with its float columns of whole numbers (NaN allowed) as nullable integers."""
    def is_whole(values) -> bool:  # below 2**53 a float holds every integer exactly
        return len(values) > 0 and bool(((values % 1 == 0) & (values.abs() < 2 ** 53)).all())
    counts = [c for c in frame.select_dtypes("float").columns if is_whole(frame[c].dropna())]
    return frame.astype({c: "Int64" for c in counts}) if counts else frame


def read_table(path: Path, **kwargs):
    """A committed table as it was written: only an empty cell is missing (pandas' defaults also read
    the text None, NA or null as missing, and a rewrite would then empty those cells)."""
    import pandas as pd
    return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)


def merge_csv(path: Path, frame, key: str) -> None:
    """Write `frame` into the table at `path`: its rows replace those of the table with the same
    `key` values, the table's other rows stay (a committed table grows machine by machine, fold by
    fold: checkpoints behind its older rows may be gone)."""
    import pandas as pd
    if path.exists():
        old = read_table(path)
        if key in old:
            frame = pd.concat([old[~old[key].isin(frame[key])], frame], ignore_index=True)
    replace_csv(path, frame)


def upsert_row(path: Path, row: dict, keys: tuple[str, ...]) -> None:
    """Write `row` into the table at `path` (all columns as text), replacing any row with the same
    values in `keys` (one row per machine, say); the other rows stay."""
    import pandas as pd
    table = read_table(path, dtype=str) if path.exists() else pd.DataFrame(columns=list(row))
    if len(table):
        table = table[~(table[list(keys)] == [str(row[k]) for k in keys]).all(axis=1)]
    replace_csv(path, pd.concat([table, pd.DataFrame([row]).astype(str)], ignore_index=True))
