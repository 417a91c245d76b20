"""The equilibrium MLP: a layered Hopfield network (Scellier & Bengio 2017) for classification.

Layers s_1 .. s_L are hidden, s_o is the output; the input r_0 = x is clamped. With rates
r_l = rho(s_l) for hidden layers and r_o = s_o for the output, the energy is

    E(s) = (1 + c)/2 sum_l |s_l|^2 - sum_{l=0..L} r_l^T W_l r_{l+1} - sum_l b_l^T r_l,

and the force F = -dE/ds in closed form is

    F_l = -(1 + c) s_l + rho'(s_l) * (r_{l-1} W_{l-1} + r_{l+1} W_l^T + b_l)   (hidden l)
    F_o = -(1 + c) s_o + r_L W_L + b_o                                          (output).

The weights are used symmetrically (bottom-up W_l, top-down W_l^T), so F is a gradient field:
classic EP is exact and `nc_force` is None.

The output layer is linear (rate = state) so that the logits are the output state itself: the
readout has no parameters of its own, the cross-entropy can grow confident (a bounded output rate
would cap the logits), and the output energy stays a strictly convex quadratic in s_o.

State z: (B, D), the concatenation [s_1, ..., s_L, s_o], D = sum(hidden) + classes. Weights are
stored (in, out) and applied as `r @ W`. `rho` is tanh or sigmoid, both analytic, so the force and
loss gradient extend holomorphically to complex states (holomorphic EP works).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import nn

from analog_ep.model.base import EquilibriumModel
from analog_ep.model.layers import cross_entropy_grad, matmul
from analog_ep.schema.model import ACTIVATIONS, MLPConfig  # noqa: F401  (re-exported)

class EquilibriumMLP(EquilibriumModel):
    """Layered Hopfield network whose free fixed point F(z*) = 0 is the forward pass."""

    analytic = True

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.sizes = (*config.hidden, config.classes)  # the state's blocks
        widths = (config.inputs, *self.sizes)
        gen = torch.Generator().manual_seed(config.seed)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(n_in, n_out, generator=gen) * config.init_scale / math.sqrt(n_in))
            for n_in, n_out in zip(widths[:-1], widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in self.sizes)
        self.to(getattr(torch, config.dtype))

    @property
    def leak(self) -> float:
        return self.config.leak

    @property
    def state_size(self) -> int:
        """D: hidden units plus outputs."""
        return sum(self.sizes)

    # ---- activation ------------------------------------------------------------------------
    def rho(self, s: torch.Tensor) -> torch.Tensor:
        """Firing rate of a hidden unit (analytic, so complex states work)."""
        return torch.tanh(s) if self.config.activation == "tanh" else torch.sigmoid(s)

    def rho_prime(self, s: torch.Tensor) -> torch.Tensor:
        """d rho / d s, written through rho itself (one transcendental evaluation)."""
        r = self.rho(s)
        return 1 - r * r if self.config.activation == "tanh" else r * (1 - r)

    def _rates(self, z: torch.Tensor, x_in: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(states [s_1..s_o], rates [r_0 = x, r_1..r_L, r_o = s_o])."""
        states = list(z.split(self.sizes, dim=-1))
        rates = [x_in.to(z.dtype)] + [self.rho(s) for s in states[:-1]] + [states[-1]]
        return states, rates

    def layer_rates(self, z: torch.Tensor, x_in: torch.Tensor) -> list[torch.Tensor]:
        """The rates [r_0 = x, r_1, ..., r_L, r_o] each layer's neurons present at state z: what a
        local learning rule measures (`analog_ep.estimator.local`)."""
        return self._rates(z, x_in)[1]

    def local_pairs(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int]]]:
        """([(weight name, its row layer, its column layer)], [(bias name, its layer)]): W_l couples
        rates l and l+1, b_l drives layer l+1 (indices into `layer_rates`)."""
        weights = [(f"weights.{l}", l, l + 1) for l in range(len(self.weights))]
        return weights, [(f"biases.{l}", l + 1) for l in range(len(self.biases))]

    # ---- the dynamical system -------------------------------------------------------------
    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """The pixels are the clamped input rates r_0 (no parameters act on them here)."""
        return x.reshape(x.shape[0], -1).to(self.weights[0].dtype)

    def initial_state(self, x_in: torch.Tensor) -> torch.Tensor:
        return x_in.new_zeros(x_in.shape[0], self.state_size)

    def energy(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """E(z) per sample, shape (B,): the force is -dE/dz (used to test that, and for diagnostics)."""
        _, rates = self._rates(z, x_in)
        leak = 0.5 * (1.0 + self.config.damping) * (z * z).sum(-1)
        coupling = sum((matmul(rates[l], w) * rates[l + 1]).sum(-1) for l, w in enumerate(self.weights))
        bias = sum((r * b).sum(-1) for r, b in zip(rates[1:], self.biases))
        return leak - coupling - bias

    def force(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        states, rates = self._rates(z, x_in)
        L = len(self.sizes) - 1  # L hidden layers; index L is the output
        out = []
        for l, s in enumerate(states):
            field = self.product(rates[l], f"weights.{l}") + self.biases[l]  # bottom-up input and bias
            if l < L:  # hidden: plus top-down feedback, through rho' since dE/ds_l = rho'(s_l) dE/dr_l
                top_down = self.product(rates[l + 2], f"weights.{l + 1}", transpose=True)
                field = self.rho_prime(s) * (field + top_down)
            out.append(field - (1.0 + self.config.damping) * s)
        return torch.cat(out, dim=-1)

    # ---- readout ---------------------------------------------------------------------------
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., -self.config.classes:]

    def loss_grad(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(z)
        g[..., -self.config.classes:] = cross_entropy_grad(self.logits(z), y)
        return g

    def param_group(self, name: str) -> str:
        """'layer{l}' for the weight W_l between layer l and l+1 (layer0 reads the input); 'bias'."""
        kind, index = name.split(".")
        return f"layer{index}" if kind == "weights" else "bias"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
