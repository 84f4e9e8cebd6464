"""MIT-BIH Arrhythmia records -> BeatGAN beats, with a checksummed cache.

Protocol (Zhou et al., IJCAI 2019, `experiments/ecg/preprocess.py`), read straight from WFDB:
44 records (paced 102, 104, 107, 217 left out); MLII plus the record's other lead, picked by name;
both leads band-passed 3-45 Hz (FIR of int(0.3 fs) taps, forward-backward: the 2019 biosppy filter);
a window ``sig[i-140 : i+180]`` (320 samples) around each annotated beat; an N-class beat is kept
only if a detected R-peak lies less than 10 samples from its annotation; each beat and channel min-max
scaled to [-1, 1].

Where the records come from, in order: an explicit folder, ``$ABLATION_MITDB``, the download cache
``runs/mitdb``, ``../shared/mitdb`` beside the project, and finally a PhysioNet download with wfdb.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import wfdb
from tqdm import tqdm

from ablation.errors import BadInput, UserError
from ablation.paths import PROJECT_ROOT, RUNS

FS = 360
RECORDS = [r for r in (
    [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 111, 112, 113, 114, 115, 116, 117, 118, 119,
     121, 122, 123, 124, 200, 201, 202, 203, 205, 207, 208, 209, 210, 212, 213, 214, 215, 217, 219,
     220, 221, 222, 223, 228, 230, 231, 232, 233, 234]) if r not in (102, 104, 107, 217)]
BEFORE, AFTER = 140, 180  # window [i-140, i+180): 320 samples
RPEAK_TOLERANCE = 10  # kept when |R-peak - annotation| < 10, strictly, as BeatGAN's preprocess.py
# BeatGAN's mapping (not AAMI's: e and j are S here).
CLASS_OF_SYMBOL = {
    **dict.fromkeys("NLR", "N"), **dict.fromkeys("aJASje", "S"), **dict.fromkeys("VE", "V"),
    "F": "F", **dict.fromkeys("/fQ", "Q"),
}
CLASSES = ["N", "S", "V", "F", "Q"]
ENV_VAR = "ABLATION_MITDB"
DOWNLOAD_DIR = RUNS / "mitdb"
SHARED_DIR = PROJECT_ROOT.parent / "shared" / "mitdb"
CACHE_VERSION = 1


class RecordsNotFound(UserError, FileNotFoundError):
    """The MIT-BIH records are in none of the places looked in (the message lists them)."""


def _has_records(folder: Path) -> bool:
    return all((folder / f"{r}.{ext}").exists() for r in RECORDS for ext in ("hea", "dat", "atr"))


def find_records(explicit: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the 44 records, searched in the documented order."""
    tried = []
    candidates = [("--mitdb option", explicit), (f"${ENV_VAR}", os.environ.get(ENV_VAR)),
                  ("download cache", DOWNLOAD_DIR), ("shared folder", SHARED_DIR)]
    for label, folder in candidates:
        if not folder:
            continue
        folder = Path(folder).expanduser()
        if _has_records(folder):
            return folder
        tried.append(f"{label}: {folder}")
        if label in ("--mitdb option", f"${ENV_VAR}"):  # an explicit choice that fails is an error
            raise RecordsNotFound(f"MIT-BIH records not found in {folder} (given by {label}): "
                                  f"expected NNN.hea/.dat/.atr for records {RECORDS[0]}..{RECORDS[-1]}")
    if download:
        try:
            DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
            wfdb.dl_database("mitdb", str(DOWNLOAD_DIR), records=[str(r) for r in RECORDS])
            if _has_records(DOWNLOAD_DIR):
                return DOWNLOAD_DIR
        except Exception as e:  # offline, DNS failure, HTTP error: all mean "no download"
            tried.append(f"PhysioNet download into {DOWNLOAD_DIR}: failed ({type(e).__name__}: {e})")
    raise RecordsNotFound(
        "MIT-BIH Arrhythmia records not found. Tried:\n  " + "\n  ".join(tried) +
        f"\nDo one of: pass --mitdb DIR; set {ENV_VAR}=DIR; run on a machine with internet so that "
        f"`python -m ablation data` downloads them into {DOWNLOAD_DIR}; or place the records in {SHARED_DIR}.")


def bandpass(x: np.ndarray, fs: float = FS) -> np.ndarray:
    """BeatGAN's 2019 filter: FIR band-pass 3-45 Hz, int(0.3 fs) taps, zero-phase. x: (..., T)."""
    b = scipy.signal.firwin(int(0.3 * fs), [3.0, 45.0], pass_zero=False, fs=fs)
    return scipy.signal.filtfilt(b, [1.0], x, axis=-1)


def detect_rpeaks(sig: np.ndarray, fs: float, detector: str) -> np.ndarray:
    if detector == "hamilton":
        from ablation.data.rpeaks import detect_rpeaks as hamilton
        return hamilton(sig, fs)
    if detector == "xqrs":
        from wfdb import processing
        x = processing.XQRS(sig=sig, fs=fs)
        x.detect(verbose=False)
        return np.asarray(x.qrs_inds, dtype=np.int64)
    raise ValueError(f"unknown rpeak detector {detector!r}; allowed: hamilton, xqrs")


def minmax(beats: np.ndarray) -> np.ndarray:
    """Per-beat, per-channel min-max scaling to [-1, 1]. beats: (n, C, 320) -> same shape, float32."""
    lo = beats.min(axis=-1, keepdims=True)
    hi = beats.max(axis=-1, keepdims=True)
    return (2.0 * (beats - lo) / np.maximum(hi - lo, 1e-8) - 1.0).astype(np.float32)


def record_beats(folder: Path, record: int, rpeak_check: bool, detector: str) -> dict[str, np.ndarray]:
    """Beats of one record: x (n, 2, 320) scaled, label (n,) class index, sample (n,), symbol (n,)."""
    rec = wfdb.rdrecord(str(folder / str(record)))
    names = list(rec.sig_name)
    if "MLII" not in names:
        raise BadInput(f"record {record} has no MLII lead (leads: {names})")
    mlii = names.index("MLII")
    other = next(i for i in range(len(names)) if i != mlii)
    sig = bandpass(rec.p_signal[:, [mlii, other]].T, rec.fs)  # (2, T)
    ann = wfdb.rdann(str(folder / str(record)), "atr")
    rpeaks = detect_rpeaks(sig[0], rec.fs, detector) if rpeak_check else None
    xs, labels, samples, symbols = [], [], [], []
    for i, sym in zip(ann.sample, ann.symbol):
        cls = CLASS_OF_SYMBOL.get(sym)
        if cls is None or i - BEFORE < 0 or i + AFTER >= sig.shape[1]:
            continue
        if cls == "N" and rpeaks is not None:
            j = np.searchsorted(rpeaks, i)
            near = rpeaks[max(j - 1, 0):j + 1]
            if near.size == 0 or np.abs(near - i).min() >= RPEAK_TOLERANCE:
                continue
        xs.append(sig[:, i - BEFORE:i + AFTER])
        labels.append(CLASSES.index(cls))
        samples.append(i)
        symbols.append(sym)
    x = minmax(np.stack(xs)) if xs else np.zeros((0, 2, BEFORE + AFTER), np.float32)
    return {"x": x, "label": np.asarray(labels, np.int8), "sample": np.asarray(samples, np.int64),
            "symbol": np.asarray(symbols, "<U1")}


@dataclass(frozen=True)
class Protocol:
    """The settings that change which beats are built (part of the cache fingerprint)."""

    rpeak_check: bool = True
    rpeak_detector: str = "hamilton"


def records_checksum(folder: Path) -> str:
    h = hashlib.sha256()
    for r in RECORDS:
        for ext in ("hea", "dat", "atr"):
            h.update((folder / f"{r}.{ext}").read_bytes())
    return h.hexdigest()


@dataclass
class Beats:
    """All beats of the 44 records. x: (n, 2, 320) float32 in [-1, 1]; label: (n,) index into
    CLASSES; record, sample: (n,) origin of each beat."""

    x: np.ndarray
    label: np.ndarray
    record: np.ndarray
    sample: np.ndarray
    fingerprint: str

    def counts(self) -> dict[str, int]:
        return {c: int((self.label == k).sum()) for k, c in enumerate(CLASSES)}


def fingerprint(protocol: Protocol, checksum: str) -> str:
    payload = {"version": CACHE_VERSION, "protocol": dataclasses.asdict(protocol), "records": checksum,
               "window": [BEFORE, AFTER], "classes": CLASS_OF_SYMBOL, "filter": "fir3-45/0.3fs/filtfilt"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(fp: str) -> Path:
    return RUNS / "cache" / f"beats-{fp}.npz"


def _read_cache(path: Path, fp: str) -> Beats | None:
    """The cached beats, or None when missing, corrupt or built under another fingerprint."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fp:
                return None
            return Beats(x=z["x"], label=z["label"], record=z["record"], sample=z["sample"], fingerprint=fp)
    except Exception:  # truncated zip, missing member, bad CRC: rebuild
        return None


def load_beats(protocol: Protocol = Protocol(), mitdb: str | Path | None = None,
               progress: bool = True) -> Beats:
    """Beats under `protocol`, from the cache when its fingerprint matches, else built and cached."""
    folder = find_records(mitdb)
    fp = fingerprint(protocol, records_checksum(folder))
    path = cache_path(fp)
    cached = _read_cache(path, fp)
    if cached is not None:
        return cached
    parts = []
    for r in tqdm(RECORDS, desc="records -> beats", disable=not progress, unit="rec"):
        b = record_beats(folder, r, protocol.rpeak_check, protocol.rpeak_detector)
        b["record"] = np.full(len(b["label"]), r, np.int16)
        parts.append(b)
    beats = Beats(x=np.concatenate([p["x"] for p in parts]), label=np.concatenate([p["label"] for p in parts]),
                  record=np.concatenate([p["record"] for p in parts]),
                  sample=np.concatenate([p["sample"] for p in parts]), fingerprint=fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # unique: builders started at once never collide
    np.savez_compressed(tmp, x=beats.x, label=beats.label, record=beats.record, sample=beats.sample,
                        fingerprint=np.asarray(fp))
    tmp.replace(path)  # atomic: a killed build never leaves a half-written cache under the real name
    return beats
