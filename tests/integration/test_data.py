"""Data protocol on the real records, the cache, record discovery and the splits."""
from collections import Counter

import numpy as np
import pytest
import wfdb

from ablation.config import DataConfig
from ablation.data import mitdb as M
from ablation.data.mitdb import CLASS_OF_SYMBOL, CLASSES, Beats, Protocol, RecordsNotFound
from ablation.data.splits import DS1, DS2, make_split


@pytest.mark.parametrize("record", [100, 114, 208])
def test_record_beats_match_annotations(mitdb, record):
    """Anomalous beats are all kept (but for the record edges); N beats drop only by the R-peak rule."""
    beats = M.record_beats(mitdb, record, rpeak_check=True, detector="hamilton")
    ann = wfdb.rdann(str(mitdb / str(record)), "atr")
    n_samples = wfdb.rdheader(str(mitdb / str(record))).sig_len
    inside = [(s, sym) for s, sym in zip(ann.sample, ann.symbol)
              if sym in CLASS_OF_SYMBOL and s >= 140 and s + 180 < n_samples]
    expected = Counter(CLASS_OF_SYMBOL[sym] for _, sym in inside)
    got = {c: int((beats["label"] == k).sum()) for k, c in enumerate(CLASSES)}
    for c in "SVFQ":
        assert got[c] == expected.get(c, 0)
    assert 0.97 * expected["N"] <= got["N"] <= expected["N"]
    assert beats["x"].shape == (sum(got.values()), 2, 320)
    assert np.allclose(beats["x"].min(-1), -1) and np.allclose(beats["x"].max(-1), 1)


def test_record_114_uses_mlii_by_name(mitdb):
    """In record 114 MLII is the second channel: channel 0 of our beats must be MLII."""
    rec = wfdb.rdrecord(str(mitdb / "114"))
    assert rec.sig_name.index("MLII") == 1
    beats = M.record_beats(mitdb, 114, rpeak_check=True, detector="hamilton")
    i = int(beats["sample"][10])
    raw = M.minmax(M.bandpass(rec.p_signal[:, [1, 0]].T)[None, :, i - 140:i + 180])[0]
    np.testing.assert_allclose(beats["x"][10], raw, atol=1e-5)


def test_find_records_order_and_errors(tmp_path, monkeypatch, mitdb):
    assert M.find_records(mitdb, download=False) == mitdb
    with pytest.raises(RecordsNotFound, match="given by --mitdb option"):
        M.find_records(tmp_path, download=False)
    monkeypatch.setenv("ABLATION_MITDB", str(tmp_path))
    with pytest.raises(RecordsNotFound, match="ABLATION_MITDB"):
        M.find_records(None, download=False)


def test_missing_everywhere_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "SHARED_DIR", tmp_path / "nope")
    monkeypatch.setattr(M, "DOWNLOAD_DIR", tmp_path / "cache")
    with pytest.raises(RecordsNotFound) as e:
        M.find_records(None, download=False)
    msg = str(e.value)
    for hint in ("--mitdb", "ABLATION_MITDB", "internet", str(tmp_path / "nope")):
        assert hint in msg


def _fake_build(monkeypatch, calls):
    def fake(folder, record, rpeak_check, detector):
        calls.append(record)
        return {"x": np.zeros((1, 2, 320), np.float32), "label": np.zeros(1, np.int8),
                "sample": np.zeros(1, np.int64), "symbol": np.asarray(["N"])}
    monkeypatch.setattr(M, "record_beats", fake)


def test_cache_reused_rebuilt_on_change_and_on_corruption(tmp_path, monkeypatch, mitdb):
    """The cache is keyed by protocol + record checksums; a corrupt file is rebuilt, not trusted."""
    monkeypatch.setattr(M, "RUNS", tmp_path)
    calls: list[int] = []
    _fake_build(monkeypatch, calls)
    a = M.load_beats(Protocol(), mitdb, progress=False)
    assert len(calls) == 44
    b = M.load_beats(Protocol(), mitdb, progress=False)
    assert len(calls) == 44 and b.fingerprint == a.fingerprint  # cache hit
    c = M.load_beats(Protocol(rpeak_check=False), mitdb, progress=False)
    assert len(calls) == 88 and c.fingerprint != a.fingerprint  # a setting changed: rebuilt
    path = M.cache_path(a.fingerprint)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    M.load_beats(Protocol(), mitdb, progress=False)
    assert len(calls) == 132
    assert M.fingerprint(Protocol(), "other-records") != a.fingerprint  # a record changed


def _beats(n_n=1000, n_a=50, seed=0) -> Beats:
    rng = np.random.default_rng(seed)
    label = np.concatenate([np.zeros(n_n), np.repeat([1, 2, 3, 4], n_a)]).astype(np.int8)
    rec = rng.choice(DS1 + DS2, len(label)).astype(np.int16)
    return Beats(x=np.zeros((len(label), 2, 320), np.float32), label=label, record=rec,
                 sample=np.arange(len(label)), fingerprint="t")


def test_beatgan_split_rules():
    beats = _beats()
    folds = [make_split(beats, DataConfig(fold=k)) for k in range(5)]
    for s in folds:
        assert set(beats.label[s.train]) == {0}
        assert not (set(s.train) & set(s.val)) and not (set(s.train) & set(s.test)) and not (set(s.val) & set(s.test))
        n_test = (beats.label[s.test] == 0).sum()
        assert n_test == 200  # 20 % of N
        assert len(s.train) == 720 and (beats.label[s.val] == 0).sum() == 80
        for k in range(1, 5):
            assert (beats.label[s.val] == k).sum() == 5 and (beats.label[s.test] == k).sum() == 45
    test_n = [set(s.test[beats.label[s.test] == 0]) for s in folds]
    assert set().union(*test_n) == set(np.flatnonzero(beats.label == 0))  # the folds cover N once
    again = make_split(beats, DataConfig(fold=0))
    assert np.array_equal(again.train, folds[0].train)  # seeded


def test_interpatient_split_keeps_patients_apart():
    beats = _beats()
    s = make_split(beats, DataConfig(split="interpatient"))
    assert set(beats.record[s.train]) <= set(DS1) and set(beats.record[s.val]) <= set(DS1)
    assert set(beats.record[s.test]) <= set(DS2)
    assert set(beats.label[s.train]) == {0}


def test_subsets_cap_train_and_val():
    beats = _beats()
    s = make_split(beats, DataConfig(train_subset=100, val_subset=64))
    assert len(s.train) == 100 and len(s.val) == 64 + 20
