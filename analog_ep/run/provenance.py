"""Provenance: the software a result was computed with, stamped on run.h5 (and sweep.h5).

`provenance()` returns flat, HDF5-attribute-friendly values; `stamp(attrs)` writes them onto any
h5py attribute set (`f.attrs`), which is all a sweep file needs to call.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = {"analog_ep_version": "analog-ep", "torch_version": "torch", "aihwkit_version": "aihwkit",
            "numpy_version": "numpy", "h5py_version": "h5py"}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        if distribution == "analog-ep":  # running from a source tree that was never installed
            from analog_ep import __version__

            return __version__
        return ""


@functools.lru_cache(maxsize=1)
def _git() -> tuple[str, bool | None]:
    """(commit, has uncommitted changes) of the source tree analog_ep runs from, or ('', None)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "", None

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "", None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "", None


def provenance() -> dict[str, str | int]:
    """Versions of analog-ep, torch, aihwkit, numpy and h5py, the Python version and platform, the
    git commit of the source tree (empty outside a git checkout; `git_dirty` 'yes' when it has
    uncommitted changes), and torch's intra-op thread count."""
    import torch

    commit, dirty = _git()
    info: dict[str, str | int] = {key: _version(dist) for key, dist in PACKAGES.items()}
    info.update(python_version=platform.python_version(), platform=platform.platform(),
                git_commit=commit, git_dirty="" if dirty is None else ("yes" if dirty else "no"),
                threads=torch.get_num_threads())
    return info


def stamp(attrs) -> None:
    """Write `provenance()` onto an h5py attribute set, e.g. `stamp(f.attrs)`."""
    for key, value in provenance().items():
        attrs[key] = value
