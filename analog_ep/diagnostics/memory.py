"""Peak tensor memory of a block of torch code, on any device including CPU.

`torch.cuda.max_memory_allocated` has no CPU counterpart, and process RSS is blurred by the
allocator and by everything else in the process. This meter instead watches the dispatcher: every
op output (factory functions such as `torch.randn`, `zeros` or `empty_like` included) whose storage
is new is counted as live until the storage is freed. It therefore measures what the code retains
(lists of tensors, autograd's saved tensors) at tensor granularity.

Limits:
  * Only storages allocated inside the context count; tensors created before it are free, even
    when the code keeps them alive or writes into them in place.
  * Scratch memory that ops allocate internally without returning it (workspaces, the allocator's
    rounding and caching) is invisible, so the figure is a lower bound on the allocator's peak.
  * Storages are summed over all devices; sparse, nested and other storage-less tensors are skipped.
  * A storage freed only by the cyclic garbage collector stays counted until `gc.collect()` runs,
    which is true of the real memory too.
  * Every op goes through Python while the context is active: a diagnostic, not for production runs.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

T = TypeVar("T")

# `torch.tensor(...)` and `torch.from_numpy` build their storage outside the dispatcher and hand it
# to `lift_fresh`, whose output aliases its input yet is a tensor born in the context.
_FRESH_OPS = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or None for tensors without one (sparse, nested, meta)."""
    if t.is_sparse or t.is_nested or t.device.type == "meta":
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


class PeakTensorMemory(TorchDispatchMode):
    """Context manager measuring live and peak bytes of tensor storages allocated inside it.

    Usage::

        with PeakTensorMemory() as mem:
            run()
        print(mem.peak_bytes, mem.current_bytes)

    A storage is registered at the op that returns it and released by a `weakref.finalize` on its
    Python object, which torch keeps alive exactly as long as the C++ storage (views and autograd's
    saved tensors included). Release keeps working after the context exits, so `current_bytes`
    then tells what the code left alive (its results, or a leak). Nesting meters is fine: each
    sees every op.
    """

    def __init__(self):
        super().__init__()
        self.peak_bytes = 0
        """Largest `current_bytes` seen so far."""
        self.current_bytes = 0
        """Bytes of storages allocated inside the context and still alive."""
        self.allocations = 0
        """Number of storages counted."""
        # Storage identity (StorageImpl address, stable across views and resizes) -> bytes. The
        # finalizer removes an entry before its address can be reused by a new storage.
        self._live: dict[int, int] = {}
        # Finalizers can run on autograd's device threads.
        self._lock = threading.Lock()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if outs:
            # Outputs sharing an input's storage (views, in-place ops, out=) allocate nothing new.
            aliased = set()
            if func not in _FRESH_OPS:
                for t in tree_leaves((args, kwargs)):
                    if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None:
                        aliased.add(s._cdata)
            for t in outs:
                self._register(t, aliased)
        return out

    def _register(self, t: torch.Tensor, aliased: set[int]) -> None:
        s = _storage(t)
        if s is None:
            return
        key, nbytes = s._cdata, s.nbytes()
        if nbytes == 0 or key in aliased:
            return
        with self._lock:
            if key in self._live:
                return
            self._live[key] = nbytes
            self.allocations += 1
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        weakref.finalize(s, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            self.current_bytes -= self._live.pop(key, 0)


def peak_bytes(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, int]:
    """Run `fn(*args, **kwargs)` under a `PeakTensorMemory` meter; return (result, peak bytes)."""
    with PeakTensorMemory() as mem:
        result = fn(*args, **kwargs)
    return result, mem.peak_bytes
