"""Layer maths shared by the models, each valid for real and for complex states.

Holomorphic EP relaxes the *holomorphic extension* of the force at complex nudges, so every op on
the state must be an analytic function of it: LayerNorm uses the non-conjugate variance
mean((z - mu)^2), softmax is a ratio of exponentials, GELU is its tanh form (an entire function).
Parameters stay real. The real path dispatches to torch's fused kernels, which agree with the
analytic formulas on the real axis.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w for a real weight; a complex x costs two real products instead of a complex one."""
    if x.is_complex():
        return torch.complex(x.real @ w, x.imag @ w)
    return x @ w


def layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim; complex inputs use the non-conjugate variance (analytic)."""
    if not z.is_complex():
        return F.layer_norm(z, (z.shape[-1],), weight, bias, eps)
    centred = z - z.mean(-1, keepdim=True)
    var = (centred * centred).mean(-1, keepdim=True)
    return centred * torch.rsqrt(var + eps) * weight + bias


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim (analytic: no conjugate)."""
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU in its tanh form, which is entire, so the holomorphic extension is exact."""
    if not x.is_complex():
        return F.gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where `mask` is True; complex scores use a ratio of exponentials."""
    if not scores.is_complex():
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    # Shift by the real max only: an analytic constant factor that cancels in the ratio.
    shift = scores.real.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    e = torch.exp(scores - shift) * mask
    return e / e.sum(-1, keepdim=True)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, analytic for complex logits."""
    if not logits.is_complex():
        return torch.softmax(logits, dim=-1)
    e = torch.exp(logits - logits.real.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def cross_entropy_grad(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dlogits of the mean cross-entropy: (softmax - onehot) / n_rows (complex-capable)."""
    p = softmax(logits)
    onehot = F.one_hot(y, logits.shape[-1]).to(p.dtype)
    return (p - onehot) / y.numel()
