"""Atomic file writes: readers see the old file or the complete new one, never half of one."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from analog_ep.errors import AnalogEPError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Run `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    os.replace is atomic on POSIX and Windows, so readers see the old file or the complete new
    one; on any exception the temporary file is removed and `path` is untouched.
    """
    if not path.parent.is_dir():
        raise AnalogEPError(f"{path}: directory {path.parent} does not exist; create it first")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the permissions, as for a plain open().
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
