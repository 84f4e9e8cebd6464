"""The pinned numeric path (`ablation.numerics`), in subprocesses: whatever kernels the caller's
environment asks for, a run trains the same bits (synthetic beats, a tiny model: not ECG)."""
import os
import subprocess
import sys

import pytest

TRAIN = """
import ablation
from ablation import fingerprint
from ablation.config import RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.data.synthetic import synthetic_beats
cfg = from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8}, "data": {"train_subset": 512, "val_subset": 200},
                            "train": {"epochs": 2, "device": "cpu"}})
digest, auc = fingerprint.run(cfg, load_data(cfg.data, beats=synthetic_beats(seed=0), progress=False))
print(digest)
"""
OTHER_KERNELS = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def _hash(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR",
                                                            "ABLATION_NUMERICS")}
    out = subprocess.run([sys.executable, "-c", TRAIN], env={**full, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-1]


def test_a_run_trains_the_same_bits_whatever_kernels_the_environment_asks_for():
    pinned = _hash()
    assert _hash(**OTHER_KERNELS) == pinned
    # the check can fail: left free (ABLATION_NUMERICS=native), those kernels train other weights
    assert _hash(ABLATION_NUMERICS="native", **OTHER_KERNELS) != pinned


def test_training_refuses_to_start_when_torch_came_first():
    code = "import torch, ablation\nfrom ablation import numerics\nnumerics.check()"
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "import ablation first" in out.stderr


def test_the_numeric_path_is_in_every_key(monkeypatch):
    from ablation import numerics
    from ablation.config import RunConfig
    pinned = RunConfig().key()
    monkeypatch.setenv("ABLATION_NUMERICS", "native")
    assert numerics.mode() == "native" and RunConfig().key() != pinned


@pytest.mark.parametrize("flags,expected", [("fpu avx2 fma avx512f avx512_bf16", "avx2 fma avx512f avx512_bf16"),
                                            ("fpu sse4_2", "")])
def test_isa_flags_keep_those_that_choose_kernels(monkeypatch, flags, expected):
    from ablation import numerics
    monkeypatch.setattr(numerics, "_cpuinfo", lambda: f"model name\t: Some CPU\nflags\t\t: {flags}\n")
    assert numerics.isa_flags() == expected and numerics.cpu_model() == "Some CPU"


def test_fingerprint_names_the_machines_whose_hash_it_matches(tmp_path, monkeypatch, capsys):
    """`fingerprint` compares this machine's hash with the table's rows (no training: the row is given)."""
    from ablation import __main__ as cli
    from ablation import fingerprint
    monkeypatch.setattr(fingerprint, "TABLE", tmp_path / "fingerprints.csv")
    row = {"fingerprint": "ab" * 32, "cpu_model": "CPU X", "val_auc": 0.75, "mode": "avx2-r1",
           "isa_flags": "avx2 fma avx512f", "torch": "2", "onednn": "3", "threads": "1"}
    fingerprint.record({**row, "isa_flags": "avx2 fma"})
    monkeypatch.setattr(fingerprint, "measure", lambda mitdb=None: dict(row))
    assert cli.main(["fingerprint", "--record"]) == 0
    assert "matches 1 machine(s) of fingerprints.csv: CPU X (avx2 fma; avx2-r1)" in capsys.readouterr().out
    monkeypatch.setattr(fingerprint, "measure", lambda mitdb=None: {**row, "fingerprint": "cd" * 32, "mode": "native"})
    assert cli.main(["fingerprint"]) == 0
    assert "not in fingerprints.csv (2 rows): this machine computes other bits on the native path" in capsys.readouterr().out


def test_fingerprint_record_keeps_the_row_of_another_torch(tmp_path, monkeypatch):
    """One row per machine, path, torch and oneDNN: a rerun under a newer torch adds a row and keeps
    the older observation; a rerun under the same versions replaces its own row."""
    from ablation import fingerprint
    monkeypatch.setattr(fingerprint, "TABLE", tmp_path / "fingerprints.csv")
    row = {"fingerprint": "ab" * 32, "cpu_model": "CPU X", "mode": "avx2-r1", "isa_flags": "avx2 fma",
           "torch": "2.11.0", "onednn": "3.10.2"}
    fingerprint.record(row)
    fingerprint.record({**row, "fingerprint": "cd" * 32, "torch": "2.13.0", "onednn": "3.12.0"})
    fingerprint.record({**row, "fingerprint": "ef" * 32, "torch": "2.13.0", "onednn": "3.12.0"})
    assert sorted(fingerprint.known()["fingerprint"]) == ["ab" * 32, "ef" * 32]
