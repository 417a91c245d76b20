"""Matrix-free Jacobian products of a force at a fixed linearisation point.

`AntisymmetricCorrection` applies (J - J^T) v, the AEP correction that turns the nudged dynamics'
J into J^T. It records the force's graph once at the linearisation point and answers each product
with two backward passes through it (J^T v directly; J v by differentiating J^T u with respect to
the cotangent u, the "double-vjp" trick), so a frozen correction never re-runs the force.
"""
from __future__ import annotations

from typing import Callable

import torch


class JacobianProducts:
    """J v and J^T v of `fn` at `z0` (real tensors of z0's shape), reusing one recorded graph."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor):
        with torch.enable_grad():
            self._z = z0.detach().requires_grad_(True)
            self._out = fn(self._z)
            self._u = torch.zeros_like(self._out, requires_grad=True)
            (self._jt_u,) = torch.autograd.grad(self._out, self._z, self._u, create_graph=True)
        self.products = 0

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._jt_u, self._u, v, retain_graph=True)
        self.products += 1
        return out

    def vjp(self, v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._out, self._z, v, retain_graph=True)
        self.products += 1
        return out

    def antisymmetric(self, v: torch.Tensor) -> torch.Tensor:
        """(J - J^T) v: twice the antisymmetric part of J applied to v."""
        return self.jvp(v) - self.vjp(v)
