"""The score function chosen on validation for stored checkpoints (no retraining).

For each residual of `ablation.train.scores` (feat, latent, window), `rescore` chooses w in
z_rec + w * z_extra on validation AUC from `WEIGHTS` (w = 0 is BeatGAN's score, up to a monotone
map: the same AUC) and scores the test set once, at it; and names the score (rec alone or one extra
at its weight) with the best validation AUC.
"""
from __future__ import annotations

import numpy as np

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN
from ablation.train.evaluate import metrics
from ablation.train.scores import EXTRAS, combine, components

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def _only(i: int, n: int, w: float) -> np.ndarray:
    """Weights for `combine` over n extra columns: w on column i, 0 on the others."""
    return np.eye(n)[i] * w


def _choose(val: np.ndarray, ref: np.ndarray, y: np.ndarray, i: int) -> tuple[float, dict[float, float]]:
    """The weight of extra column i (the others at 0) with the best validation AUC (ties: the
    smaller weight) and the validation AUC at every weight."""
    val_auc = {w: metrics(y, combine(val, ref, _only(i, val.shape[1] - 1, w)))["auc"] for w in WEIGHTS}
    return max(WEIGHTS, key=lambda w: (val_auc[w], -w)), val_auc


def rescore(model: BeatGAN, data: DataBundle, batch_size: int = 2048) -> dict[str, float | str]:
    """For each extra residual `name`: `name_weight` chosen on validation, `name_val_auc`, and
    `name_test_auc` / `name_test_ap` at it; `best_score` is the score with the best validation AUC
    (`rec`: BeatGAN's own, kept on ties) and `test_auc_best` its test AUC. `weight`, `val_auc_w*`
    and `*_chosen` repeat the D-feature residual's (the columns of the earlier tables)."""
    extras = tuple(EXTRAS)
    val = components(model.G, model.D, data.val.x, extras, batch_size=batch_size)
    test = components(model.G, model.D, data.test.x, extras, batch_size=batch_size)
    ref = val[data.val.y == 0]
    plain = metrics(data.test.y, combine(test, ref, 0.0), data.test.cls)
    val_plain = metrics(data.val.y, combine(val, ref, 0.0))["auc"]
    out: dict[str, float | str] = {"val_auc_plain": val_plain, "test_auc_plain": plain["auc"], "test_ap_plain": plain["ap"]}
    best = (val_plain, "rec", plain)
    for i, name in enumerate(extras):
        w, val_auc = _choose(val, ref, data.val.y, i)
        chosen = metrics(data.test.y, combine(test, ref, _only(i, len(extras), w)), data.test.cls)
        out.update({f"{name}_weight": w, f"{name}_val_auc": val_auc[w], f"{name}_test_auc": chosen["auc"],
                    f"{name}_test_ap": chosen["ap"]})
        if name == "feat":
            out.update({"weight": w, "val_auc_chosen": val_auc[w], **{f"val_auc_w{v:g}": a for v, a in val_auc.items()},
                        "test_auc_chosen": chosen["auc"], "test_ap_chosen": chosen["ap"]})
        if val_auc[w] > best[0]:
            best = (val_auc[w], name, chosen)
    return {**out, "best_score": best[1], "best_val_auc": best[0], "test_auc_best": best[2]["auc"],
            "test_ap_best": best[2]["ap"]}
