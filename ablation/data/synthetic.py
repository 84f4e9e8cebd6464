"""Synthetic beats for fast tests (not ECG: Gaussian bumps shaped like P-QRS-T, plus noise).

Normal beats share one template with jittered amplitudes and timing; anomalous classes change the
template (wide QRS for V, missing P for S, ...), so a reconstruction model can separate them a bit.
Used only where a test says so; real-data tests use the MIT-BIH records.
"""
from __future__ import annotations

import numpy as np

from ablation.data.mitdb import AFTER, BEFORE, CLASSES, Beats, minmax

_T = np.arange(BEFORE + AFTER, dtype=np.float64)
# (centre offset from the R-peak, width, amplitude) of P, Q, R, S, T waves per class.
_WAVES = {
    "N": [(-60, 10, 0.15), (-8, 3, -0.1), (0, 4, 1.0), (8, 3, -0.2), (90, 20, 0.3)],
    "S": [(-8, 3, -0.1), (0, 4, 1.0), (8, 3, -0.2), (70, 20, 0.3)],
    "V": [(0, 14, 1.2), (30, 14, -0.6), (110, 25, -0.3)],
    "F": [(-60, 10, 0.15), (0, 9, 0.9), (20, 9, -0.5), (90, 20, 0.2)],
    "Q": [(-30, 2, 1.0), (0, 6, 0.8), (60, 30, 0.4)],
}


def synthetic_beats(n_per_class: dict[str, int] | None = None, seed: int = 0) -> Beats:
    """A `Beats` object of synthetic beats, 2 channels, spread over the 44 record ids."""
    from ablation.data.mitdb import RECORDS
    n_per_class = n_per_class or {"N": 2000, "S": 100, "V": 100, "F": 40, "Q": 10}
    rng = np.random.default_rng(seed)
    xs, labels = [], []
    for cls, n in n_per_class.items():
        waves = np.asarray(_WAVES[cls])
        centre = BEFORE + waves[:, 0] + rng.normal(0, 2, (n, 1))
        width = waves[:, 1] * rng.uniform(0.85, 1.15, (n, 1))
        amp = waves[:, 2] * rng.uniform(0.8, 1.2, (n, 1))
        lead = (amp[:, :, None] * np.exp(-0.5 * ((_T - centre[:, :, None]) / width[:, :, None]) ** 2)).sum(1)
        lead += rng.normal(0, 0.02, lead.shape)
        xs.append(np.stack([lead, 0.6 * lead + rng.normal(0, 0.02, lead.shape)], axis=1))
        labels += [CLASSES.index(cls)] * n
    label = np.asarray(labels, np.int8)
    return Beats(x=minmax(np.concatenate(xs)), label=label,
                 record=rng.choice(np.asarray(RECORDS, np.int16), len(label)),
                 sample=np.zeros(len(label), np.int64), fingerprint=f"synthetic-{seed}")
