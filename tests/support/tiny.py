"""The tiny configs every test trains: ndf = ngf = 4, nz = 8 (seconds on one core, numbers mean nothing).

`tiny_dict` gives the config as a study file or `from_dict` reads it; section overrides merge into
it key by key, e.g. ``tiny_dict("student", train={"epochs": 2})``. `tiny` gives the `RunConfig`.
"""
from __future__ import annotations

import copy

from ablation.config import RunConfig, from_dict

TINY_MODEL = {"ndf": 4, "ngf": 4, "nz": 8}
_TEACHER = {"data": {"train_subset": 256, "val_subset": 200}, "model": TINY_MODEL,
            "train": {"epochs": 1, "device": "cpu"}}
_DISTILL = {"teacher": TINY_MODEL, "teacher_train": {"epochs": 1}, "teacher_train_subset": 256}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def tiny_dict(role: str = "teacher", **sections: dict) -> dict:
    """A tiny teacher, or a tiny student of a tiny teacher, with `sections` merged in."""
    base = {"role": role, **_TEACHER, **({"distill": _DISTILL} if role == "student" else {})}
    return _merge(base, sections)


def tiny(role: str = "teacher", **sections: dict) -> RunConfig:
    return from_dict(RunConfig, tiny_dict(role, **sections))
