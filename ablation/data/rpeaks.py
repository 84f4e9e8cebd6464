"""R-peak detection on one ECG lead with the Hamilton QRS detector.

Reference: P. S. Hamilton, "Open source ECG analysis", Computers in Cardiology 29 (2002) 101-104.

The variant follows BioSPPy's ``hamilton_segmenter`` followed by ``correct_rpeaks`` (tolerance
50 ms), the detector that BeatGAN's MIT-BIH protocol (Zhou et al., IJCAI 2019) relies on to keep a
normal beat only when an R-peak is detected near its annotation. Steps:

1. detection function: zero-phase 4th-order Butterworth low-pass 25 Hz then high-pass 3 Hz,
   absolute first difference (times fs), smoothed by an 80 ms Hamming window;
2. candidates: local maxima of the detection function with no larger local maximum less than
   200 ms before or after;
3. adaptive threshold DT = ANP + 0.475 (AQRSP - ANP), ANP and AQRSP being the medians of the last
   8 noise and QRS peak heights (QRS heights seeded with the largest peak of each of the first 8 s).
   A candidate above DT is a QRS complex when the input lead both rises and falls within 45 ms of
   it, it is not a T wave (closer than 360 ms to the previous QRS with under half its steepest
   rise) and it is under three times AQRSP. A candidate at or below DT is a missed QRS (search-back)
   when at least 1.5 median RR intervals and more than 360 ms have passed since the last QRS and it
   exceeds DT / 2; otherwise it is noise;
4. each QRS is placed on the R wave within +-200 ms: the highest maximum or the deepest minimum of
   the input lead, whichever stands out more from the next extremum of its kind farther than 50 ms;
5. each R-peak is finally moved to the maximum of the input lead in [r - 50 ms, r + 50 ms).
"""
from __future__ import annotations

import statistics

import numpy as np
import scipy.ndimage
import scipy.signal
from numpy.lib.stride_tricks import sliding_window_view

_BUFFER_LEN = 8  # peak-height and RR buffers; also the seconds used to seed the QRS heights
_THRESHOLD_COEF = 0.475
_POLARITY_RATIO = 0.85  # the positive R wave wins if it stands out over 0.85 times the negative


def _local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices where the slope sign of x decreases (both ends of a flat top count). (n,) -> (k,)."""
    return np.flatnonzero(np.diff(np.sign(np.diff(x))) < 0) + 1


def _detection_function(signal: np.ndarray, fs: float) -> np.ndarray:
    """Smoothed absolute slope of the 3-25 Hz band of the lead. (n,) -> (n - 1,)."""
    b, a = scipy.signal.butter(4, 25.0, btype="lowpass", fs=fs)
    x = scipy.signal.filtfilt(b, a, signal)
    b, a = scipy.signal.butter(4, 3.0, btype="highpass", fs=fs)
    x = scipy.signal.filtfilt(b, a, x)
    slope = np.abs(np.diff(x) * fs)
    size = min(int(0.08 * fs), slope.size - 1)
    kernel = scipy.signal.windows.hamming(size)
    kernel /= kernel.sum()
    padded = np.concatenate([np.full(size, slope[0]), slope, np.full(size, slope[-1])])
    return np.convolve(padded, kernel, mode="same")[size:-size]


def _qrs_detections(signal: np.ndarray, fs: float) -> np.ndarray:
    """Hamilton's decision rules on the detection-function peaks. (n,) -> sorted (m,) int64."""
    n = signal.size
    det = _detection_function(signal, fs)
    n_buf = min(_BUFFER_LEN, int(n / fs))
    second = int(fs)
    lim = int(np.ceil(0.2 * fs))
    half_slope = int(np.ceil(0.045 * fs))
    t_wave_window = np.ceil(0.36 * fs)

    peaks = _local_maxima(det)
    heights = np.full(det.shape, -np.inf)
    heights[peaks] = det[peaks]
    neighbourhood = scipy.ndimage.maximum_filter1d(heights, size=2 * lim - 1, mode="constant",
                                                   cval=-np.inf)
    cands = peaks[neighbourhood[peaks] <= det[peaks]]

    # Slopes of the input lead within 45 ms of each candidate: diffs[lo:hi] (never empty). Near the
    # end of the lead the window stops one difference short, as BioSPPy's does.
    diffs = np.diff(signal)
    lo = np.maximum(cands - half_slope, 0)
    hi = np.where(cands + half_slope < n, cands + half_slope, n - 1) - 1
    n_rising = np.concatenate([[0], np.cumsum(diffs > 0)])
    rises = n_rising[hi] - n_rising[lo]
    biphasic = (rises > 0) & (rises < hi - lo)
    steepest = np.maximum.reduceat(diffs, np.column_stack([lo, hi]).ravel())[::2]

    qrs_buf = [0.0] * n_buf
    for k in range(n_buf):
        block = peaks[(peaks > k * second) & (peaks < min((k + 1) * second, det.size) - 1)]
        if block.size:
            qrs_buf[k] = float(det[block].max())
    noise_buf = [0.0] * n_buf
    rr_buf = [float(fs)] * n_buf
    i_qrs = i_noise = i_rr = 0
    beats: list[int] = []
    noise_level = statistics.median(noise_buf)
    qrs_level = statistics.median(qrs_buf)
    dt = noise_level + _THRESHOLD_COEF * (qrs_level - noise_level)

    last_steepest = 0.0
    for f, h, ok, rise in zip(cands.tolist(), det[cands].tolist(), biphasic.tolist(),
                              steepest.tolist()):
        since_last = f - beats[-1] if beats else 0
        if h > dt:
            if not ok:
                continue
            if beats and since_last < t_wave_window and rise < 0.5 * last_steepest:
                continue
            if h >= 3.0 * qrs_level:
                continue
        elif (len(beats) >= 2 and since_last > t_wave_window
              and since_last >= 1.5 * statistics.median(rr_buf)):
            if h <= 0.5 * dt:
                continue
        else:
            noise_buf[i_noise] = h
            i_noise = (i_noise + 1) % n_buf
            noise_level = statistics.median(noise_buf)
            dt = noise_level + _THRESHOLD_COEF * (qrs_level - noise_level)
            continue
        if beats:
            rr_buf[i_rr] = float(f - beats[-1])
            i_rr = (i_rr + 1) % n_buf
        beats.append(f)
        last_steepest = rise
        qrs_buf[i_qrs] = h
        i_qrs = (i_qrs + 1) % n_buf
        qrs_level = statistics.median(qrs_buf)
        dt = noise_level + _THRESHOLD_COEF * (qrs_level - noise_level)
    return np.asarray(beats, dtype=np.int64)


def _r_waves(signal: np.ndarray, beats: np.ndarray, fs: float) -> np.ndarray:
    """Put each QRS (m,) on its positive or negative R wave within 200 ms -> sorted unique (k,)."""
    n = signal.size
    lim = int(np.ceil(0.2 * fs))
    adjacency = 0.05 * fs
    idx = beats[:, None] + np.arange(-lim, lim)  # window signal[b - lim : b + lim], clipped below
    valid = (idx >= 0) & (idx < n)
    w = signal[np.clip(idx, 0, n - 1)]
    dw = np.diff(w, axis=1)
    dvalid = valid[:, 1:] & valid[:, :-1]
    bend = np.diff(np.sign(dw), axis=1)
    bvalid = dvalid[:, 1:] & dvalid[:, :-1]
    flat = (dw == 0) & dvalid
    is_max = np.zeros(w.shape, dtype=bool)
    is_min = np.zeros(w.shape, dtype=bool)
    is_max[:, 1:-1] = (bend < 0) & bvalid
    is_min[:, 1:-1] = (bend > 0) & bvalid
    is_max[:, :-1] |= flat  # a sample followed by an equal one is a candidate of both kinds
    is_min[:, :-1] |= flat

    cols = np.arange(w.shape[1])
    rows = np.arange(w.shape[0])
    # Highest maximum (last one on ties) and deepest minimum (first one on ties).
    top_pos = w.shape[1] - 1 - np.argmax(np.where(is_max, w, -np.inf)[:, ::-1], axis=1)
    top_neg = np.argmin(np.where(is_min, w, np.inf), axis=1)
    far_pos = is_max & (np.abs(cols - top_pos[:, None]) > adjacency)
    far_neg = is_min & (np.abs(cols - top_neg[:, None]) > adjacency)
    pos_gap = np.abs(w[rows, top_pos] - np.where(far_pos, w, -np.inf).max(axis=1))
    neg_gap = np.abs(w[rows, top_neg] - np.where(far_neg, w, np.inf).min(axis=1))
    has_pos2, has_neg2 = far_pos.any(axis=1), far_neg.any(axis=1)
    # Both kinds have a rival: compare how far each stands out. One kind has none: take that kind.
    # Neither has: take the later extremum. A window lacking either kind yields no R-peak.
    positive = np.where(has_pos2 & has_neg2, pos_gap > _POLARITY_RATIO * neg_gap,
                        np.where(has_pos2 | has_neg2, ~has_pos2, top_pos > top_neg))
    keep = is_max.any(axis=1) & is_min.any(axis=1)
    r = np.where(positive, top_pos, top_neg) + beats - lim
    return np.unique(r[keep])


def detect_rpeaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peaks of one band-passed ECG lead. signal: (n,) float; fs in Hz.

    Returns sorted unique int64 sample indices of R-peaks, shape (k,); empty when the lead is
    shorter than one second.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D lead, got shape {x.shape}")
    if x.size < fs:
        return np.zeros(0, dtype=np.int64)
    r = _r_waves(x, _qrs_detections(x, fs), fs)
    tol = int(0.05 * fs)
    r = r[(r >= tol) & (r + tol <= x.size)]
    windows = sliding_window_view(x, 2 * tol)
    return np.unique(r - tol + np.argmax(windows[r - tol], axis=1)).astype(np.int64)
