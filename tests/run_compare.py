"""Bit-for-bit comparison of two run directories (run.h5, state.pt, best.pt), for the run tests."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch


def h5_contents(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, keyed by path."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = [bytes(x) for x in data] if data.dtype == object else data
        visit("/", f)
        f.visititems(visit)
    return out


def tensors(obj, prefix=""):
    """Flatten a (nested) state dict into {path: leaf}."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in tensors(value, f"{prefix}{key}/").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in tensors(value, f"{prefix}{i}/").items()}
    return {prefix: obj}


#: Measured wall-clock time: the one thing two identical runs never share.
WALL_CLOCK = {"/@wall_s", "wall_s/"}


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two run directories' run.h5, state.pt and best.pt (bit for bit), apart
    from the measured wall-clock time."""
    diffs = []
    ha, hb = h5_contents(a / "run.h5"), h5_contents(b / "run.h5")
    for contents in (ha, hb):
        for key in WALL_CLOCK & contents.keys():
            del contents[key]
    diffs += [f"run.h5 {k}: only in one" for k in ha.keys() ^ hb.keys()]
    for key in ha.keys() & hb.keys():
        x, y = ha[key], hb[key]
        if isinstance(x, list):
            same = x == y
        else:
            x, y = np.asarray(x), np.asarray(y)
            same = np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
        if not same:
            diffs.append(f"run.h5 {key}")
    for name in ("state.pt", "best.pt"):
        sa = tensors(torch.load(a / name, weights_only=False))
        sb = tensors(torch.load(b / name, weights_only=False))
        for contents in (sa, sb):
            for key in WALL_CLOCK & contents.keys():
                del contents[key]
        diffs += [f"{name} {k}: only in one" for k in sa.keys() ^ sb.keys()]
        for key in sa.keys() & sb.keys():
            x, y = sa[key], sb[key]
            if isinstance(x, torch.Tensor):
                same = x.shape == y.shape and torch.equal(x, y) if not x.is_floating_point() else \
                    x.shape == y.shape and bool(torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0)))
            elif isinstance(x, float):
                same = x == y or (x != x and y != y)
            else:
                same = x == y
            if not same:
                diffs.append(f"{name} {key}")
    return sorted(diffs)
