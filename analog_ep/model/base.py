"""The contract every equilibrium model satisfies.

A model is a vector field (force) `F(z; x_in, theta)` on a state `z`, a readout `logits(z)` and a
loss. Relaxation, estimators and diagnostics only ever talk to this interface, so the thick
transformer block, its research variants and the equilibrium MLP are interchangeable.

Conventions
-----------
* `z` has the batch on its first dimension; samples never interact through the force, so norms
  and solvers may treat each sample independently.
* `drive(x)` maps raw inputs to the clamp term `x_in` that the force needs. It is differentiable
  (embeddings are trained through the clamp), so call it under `torch.no_grad()` for relaxation.
* `force` and `nc_force` are pure functions of `(z, x_in)` and the current parameters. Models whose
  `analytic` is True accept complex `z` (holomorphic extension) with real parameters.
* `nc_force` is the non-conservative part of the force: the part whose Jacobian is not symmetric.
  The AEP correction and the Jacobian penalty act on it. `None` means the force is conservative.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from analog_ep.errors import AnalogEPError
from analog_ep.model.layers import matmul


class EquilibriumModel(nn.Module):
    """Abstract base: subclasses implement the force, the readout and the parameter grouping."""

    #: True when `force`, `nc_force` and `loss_grad` extend holomorphically to complex `z`.
    analytic: bool = False

    #: Set by an analog chip (`analog_ep.hardware.chip.AnalogChip`): weight products of real
    #: states outside autograd then run on its crossbars, with their periphery.
    hardware = None

    def weight(self, name: str) -> torch.Tensor:
        """The tensor called `name` as the force uses it: the parameter, unless a linear operator
        substituted its own for the duration of a product (`substituted`)."""
        substitutes = self.__dict__.get("_substitutes")
        if substitutes and name in substitutes:
            return substitutes[name]
        if self.reads_tiles(name):
            raise AnalogEPError(f"{name} lives on a chip that learns locally (chip.learning: local): its "
                                "conductances are not known to the digital side; read it through the tiles "
                                "(`product`), or read the chip explicitly (analog_ep.linear, reads='chip')")
        return self.get_parameter(name)

    def reads_tiles(self, name: str) -> bool:
        """Whether products with `name` are reads through a locally learning chip's tiles whatever
        the context, autograd included (`AnalogChip.read`): the chip holds it, learns locally
        (chip.learning: local) and no linear operator substituted it."""
        hw = self.hardware
        return (hw is not None and getattr(hw, "local", False) and hw.holds(name)
                and name not in (self.__dict__.get("_substitutes") or {}))

    @contextmanager
    def substituted(self, weights: Mapping[str, torch.Tensor]):
        """Within the block every product reads `weights[name]` (a chip's effective conductances, or
        leaves to differentiate) instead of the parameter, and nothing is routed through a chip.
        An empty mapping changes nothing."""
        if not weights:
            yield
            return
        previous = self.__dict__.get("_substitutes")
        self.__dict__["_substitutes"] = {**(previous or {}), **weights}
        try:
            yield
        finally:
            self.__dict__["_substitutes"] = previous

    def _on_chip(self, x: torch.Tensor) -> bool:
        """Products of real states outside autograd run on the chip, unless weights are substituted."""
        return (self.hardware is not None and not x.is_complex() and not torch.is_grad_enabled()
                and not self.__dict__.get("_substitutes"))

    def product(self, x: torch.Tensor, name: str, transpose: bool = False) -> torch.Tensor:
        """x @ W (or x @ W^T) for the weight called `name`: where the state meets a weight matrix.

        Routed through the chip (with its periphery: noise, converters) when one holds that matrix,
        the state is real and no autograd graph is recorded - and always, autograd included, on a
        chip that learns locally (`reads_tiles`; the parameter only carries the gradient);
        otherwise `weight(name)`: the parameter, or what a linear operator substituted (see
        `analog_ep.linear`).
        """
        if self.reads_tiles(name):
            return self.hardware.read(name, x, self.get_parameter(name), transpose)
        if self._on_chip(x) and self.hardware.holds(name):
            return self.hardware.matmul(name, x, transpose)
        w = self.weight(name)
        return matmul(x, w.t() if transpose else w)

    def products(self, x: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
        """[x @ W for each name]: one fused read when the chip holds them all (same input rows)."""
        if self._on_chip(x) and all(self.hardware.holds(n) for n in names):
            return self.hardware.matmul_shared(tuple(names), x)
        return [self.product(x, n) for n in names]

    # ---- the dynamical system -------------------------------------------------------------
    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp term `x_in` for raw input `x` (token ids, pixels...)."""
        raise NotImplementedError

    def initial_state(self, x_in: torch.Tensor) -> torch.Tensor:
        """Where a relaxation starts, as a differentiable function of `x_in`.

        Relaxations detach it; BPTT keeps the graph (the start point carries gradient to the clamp).
        """
        return x_in

    def force(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """The vector field `F(z)`; the fixed point is `F(z*) = 0`."""
        raise NotImplementedError

    def nc_force(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor | None:
        """Non-conservative part `F_nc(z)` of the force (None if the force is a gradient field)."""
        return None

    @property
    def has_nc_force(self) -> bool:
        """Whether `nc_force` returns a tensor (known without evaluating it, e.g. on a noisy chip)."""
        return False

    @property
    def leak(self) -> float:
        """lambda >= 0 with F(z) = -lambda z + N(z): the linear self-decay of every state component
        (the node's leak), which a circuit's exponential integrator takes exactly (0: none)."""
        return 0.0

    # ---- readout and task ------------------------------------------------------------------
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Class scores read from the state, shape (..., n_classes)."""
        raise NotImplementedError

    def loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the readout against integer targets `y`."""
        logits = self.logits(z)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def loss_grad(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d loss / d z in closed form (complex-capable when `analytic`); no autograd graph."""
        raise NotImplementedError

    # ---- parameters ------------------------------------------------------------------------
    def readout_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters that do not enter the force (trained by their local gradient)."""
        return []

    def force_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters that enter the force (trained by the EP vector-field contrast)."""
        readout = {id(p) for _, p in self.readout_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in readout]

    def param_group(self, name: str) -> str:
        """Group of a parameter for per-group diagnostics (attention, ffn, layernorm, ...)."""
        return "other"

    def groups(self) -> dict[str, list[str]]:
        """Group name -> parameter names, in parameter order."""
        out: dict[str, list[str]] = {}
        for name, _ in self.named_parameters():
            out.setdefault(self.param_group(name), []).append(name)
        return out

    def weight_matrices(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The 2-D weights of the force (the ones that live on crossbars in the analog twin)."""
        for name, p in self.force_parameters():
            if p.ndim == 2 and self.param_group(name) != "embeddings":
                yield name, p
