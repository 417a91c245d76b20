"""The equilibrium transformer block and the research trainer's other force modes.

State z: (B, T, C), one vector per token. Input clamp x_in = tok[idx] + pos. Modes:

* ``thick`` - a pre-LN transformer block run as a fixed point:
      F(z) = -(z - x_in) + Attn(LN1 z) + FFN(LN2 z) - c z
  Untied Q/K/V/O and an untied 4x tanh-GELU FFN: non-conservative, F_nc = Attn + FFN.
* ``real``  - Hopfield memory energy plus damped non-conservative attention:
      F(z) = -(z - x_in) + 2 relu(z Wm) Wm^T + s (Attn(z) - c z),  F_nc = s Attn(z)
* ``energy`` - conservative: F = -grad E with
      E = 1/2|z - x_in|^2 - sum relu(z Wm)^2 - (1/gamma) sum LSE(gamma q.k) + c/2 |z|^2
  (log-sum-exp attention energy, value tied to key); classic EP is exact, F_nc = None.
* ``mono`` - monotone-operator contraction (Winston & Kolter 2020):
      F(z) = -(m z + z P^T P) + z (Q - Q^T)^T + x_in + 2 relu(z Wm) Wm^T + s Attn(z)
  whose linear part has symmetric part <= -m I; F_nc = z (Q - Q^T)^T + s Attn(z).

Weights are stored (in, out) and applied as ``x @ W``.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from analog_ep.model.base import EquilibriumModel
from analog_ep.schema.model import MODES, TransformerConfig  # noqa: F401  (re-exported)
from analog_ep.model.layers import (
    cross_entropy_grad,
    gelu_tanh,
    layer_norm,
    masked_softmax,
    rms_norm,
)

_GELU_A = math.sqrt(2.0 / math.pi)


class EquilibriumTransformer(EquilibriumModel):
    """One transformer block whose forward pass is a relaxation to the fixed point F(z*) = 0."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        C, T, V, H = config.width, config.context, config.vocab_size, config.heads
        self.heads, self.head_dim = H, C // H
        gen = torch.Generator().manual_seed(config.seed)

        def param(*shape, std=0.0, fill=0.0):
            t = torch.randn(*shape, generator=gen) * std if std > 0 else torch.full(shape, float(fill))
            return nn.Parameter(t)

        inv = 1.0 / math.sqrt(C)
        self.tok = param(V, C, std=config.embed_scale)
        self.pos = param(T, C, std=config.embed_scale)
        # Attention projections, present in every mode (energy ties value to key: no W_v/W_o).
        self.W_q = param(C, C, std=inv)
        self.W_k = param(C, C, std=inv)
        if config.mode != "energy":
            self.W_v = param(C, C, std=inv)
            self.W_o = param(C, C, std=inv * config.out_scale)
        if config.mode == "thick":
            M = config.ffn_mult * C
            self.ln1_w, self.ln1_b = param(C, fill=1.0), param(C)
            self.ln2_w, self.ln2_b = param(C, fill=1.0), param(C)
            self.W_fc, self.b_fc = param(C, M, std=inv), param(M)
            self.W_proj, self.b_proj = param(M, C, std=config.out_scale / math.sqrt(M)), param(C)
        else:
            self.W_mem = param(C, config.memory, std=config.memory_scale * inv)
        if config.mode == "mono":
            self.P = param(C, C, std=inv)
            self.Q = param(C, C, std=inv)
        self.W_head = param(C, V, std=inv)
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)), persistent=False)
        if config.dtype == "float64":
            self.double()

    # ---- the dynamical system -------------------------------------------------------------
    @property
    def analytic(self) -> bool:  # relu memory terms are not holomorphic
        return self.config.mode == "thick"

    @property
    def has_nc_force(self) -> bool:
        return self.config.mode != "energy"

    @property
    def leak(self) -> float:
        return self.config.leak

    def drive(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if self.reads_tiles("pos"):  # positions on a locally learning chip: one-hot rows read through it
            pos = self.product(torch.eye(T, dtype=self.tok.dtype), "pos")
        else:
            pos = self.weight("pos")[:T]
        if self.reads_tiles("tok") or (self._on_chip(pos) and self.hardware.holds("tok")):
            # Embeddings on a crossbar: a lookup is the read of one row (a one-hot input).
            onehot = F.one_hot(idx, self.config.vocab_size).to(self.tok.dtype)  # (B, T, V)
            return self.product(onehot, "tok") + pos
        # F.embedding, not tok[idx]: its backward accumulates in a fixed order, where indexing's
        # (index_put_ with accumulate) sums repeated tokens in an order that varies between
        # processes when it runs on several threads, and a last-bit difference flips a sign update
        return F.embedding(idx, self.weight("tok")) + pos  # (B, T, C)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.reshape(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, dh)

    def _fast_path(self, h: torch.Tensor) -> bool:
        """Fused kernels are used for real states when no graph is recorded (relaxation, nudges).

        The analytic path stays in use under autograd because the AEP correction differentiates
        the force twice, which the fused attention kernel does not support.
        """
        return not h.is_complex() and not torch.is_grad_enabled()

    def _digital(self, h: torch.Tensor) -> bool:
        """Fast path with every weight digital: products may be fused across matrices."""
        return self._fast_path(h) and self.hardware is None and not self.__dict__.get("_substitutes")

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention of the (normalised) state h: (B, T, C) -> (B, T, C)."""
        B, T, C = h.shape
        if self._digital(h):
            qkv = h @ torch.cat([self.W_q, self.W_k, self.W_v], dim=1)  # (B, T, 3C)
            q, k, v = (self._heads(t) for t in qkv.split(C, dim=-1))
        else:
            q, k, v = (self._heads(t) for t in self.products(h, ("W_q", "W_k", "W_v")))
        if self.config.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self._fast_path(h):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, dh)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
            out = masked_softmax(scores, self.causal[:T, :T]) @ v
        return self.product(out.transpose(1, 2).reshape(B, T, C), "W_o")  # (B, H, T, dh) -> (B, T, C)

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        if self._digital(h):
            B, T, C = h.shape
            flat = h.reshape(B * T, C)  # addmm fuses the bias into the product
            hidden = F.gelu(torch.addmm(self.b_fc, flat, self.W_fc), approximate="tanh")
            return torch.addmm(self.b_proj, hidden, self.W_proj).reshape(B, T, C)
        return self.product(gelu_tanh(self.product(h, "W_fc") + self.b_fc), "W_proj") + self.b_proj

    def _memory_force(self, z: torch.Tensor) -> torch.Tensor:
        """-grad of E_mem = -sum relu(z Wm)^2 (a forward and a transposed read of one array)."""
        return 2.0 * self.product(F.relu(self.product(z, "W_mem")), "W_mem", transpose=True)

    def _lse_attention_force(self, z: torch.Tensor) -> torch.Tensor:
        """-grad of E_att = -(1/gamma) sum_{heads, i} LSE_j(gamma q_i.k_j / sqrt(dh)), causal."""
        B, T, C = z.shape
        q, k = self._heads(self.product(z, "W_q")), self._heads(self.product(z, "W_k"))
        scale = 1.0 / math.sqrt(self.head_dim)
        p = masked_softmax(self.config.lse_gamma * scale * (q @ k.transpose(-2, -1)), self.causal[:T, :T])
        dq = (p @ k * scale).transpose(1, 2).reshape(B, T, C)  # dE/dq = -probs K / sqrt(dh)
        dk = (p.transpose(-2, -1) @ q * scale).transpose(1, 2).reshape(B, T, C)
        return self.product(dq, "W_q", transpose=True) + self.product(dk, "W_k", transpose=True)

    def nc_force(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        if cfg.mode == "thick":
            return self.attention(layer_norm(z, self.ln1_w, self.ln1_b)) + self.ffn(
                layer_norm(z, self.ln2_w, self.ln2_b))
        if cfg.mode == "real":
            return cfg.attn_gain * self.attention(z)
        if cfg.mode == "mono":  # z (Q - Q^T)^T = z Q^T - z Q
            skew = self.product(z, "Q", transpose=True) - self.product(z, "Q")
            return skew + cfg.attn_gain * self.attention(z)
        return None

    def force(self, z: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.mode == "thick":
            out = self.nc_force(z, x_in)
            if self._fast_path(z):  # in place: saves two full-size temporaries per evaluation
                return out.add_(x_in).sub_(z, alpha=1.0 + cfg.damping)
            return x_in - (1.0 + cfg.damping) * z + out
        if cfg.mode == "real":
            return x_in - z + self._memory_force(z) + cfg.attn_gain * (self.attention(z) - cfg.damping * z)
        if cfg.mode == "energy":
            return x_in - (1.0 + cfg.damping) * z + self._memory_force(z) + self._lse_attention_force(z)
        # mono
        sym = cfg.mono_margin * z + self.product(self.product(z, "P", transpose=True), "P")  # z P^T P
        return x_in - sym + self._memory_force(z) + self.nc_force(z, x_in)

    def linearize_nc(self, z: torch.Tensor) -> "ThickLinearization | None":
        """Closed-form J_nc products at z (thick mode without q/k norm), or None for autograd."""
        if self.config.mode != "thick" or self.config.qk_norm or z.is_complex():
            return None
        return ThickLinearization(self, z)

    # ---- readout ---------------------------------------------------------------------------
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.product(z, "W_head")  # (B, T, V)

    def loss_grad(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.product(cross_entropy_grad(self.logits(z), y), "W_head", transpose=True)

    def readout_parameters(self):
        return [("W_head", self.W_head)]

    def param_group(self, name: str) -> str:
        if name in ("tok", "pos"):
            return "embeddings"
        if name == "W_head":
            return "readout"
        if name.startswith("ln"):
            return "layernorm"
        if name in ("W_fc", "b_fc", "W_proj", "b_proj"):
            return "ffn"
        if name == "W_mem":
            return "memory"
        if name in ("P", "Q"):
            return "monotone"
        return "attention"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


class ThickLinearization:
    """J_nc v and J_nc^T v of the thick block's Attn(LN1 z) + FFN(LN2 z) at a fixed state z0: the
    closed-form `analog_ep.linear.Linearization` of this block (build it with `linearize`).

    Every elementwise Jacobian factor (LayerNorm statistics, attention probabilities, GELU slope)
    is computed once here, so each product afterwards is the block's matmuls plus a few cheap
    elementwise ops: about half the cost of autograd's double backward, which re-derives the
    LayerNorm and GELU second-order terms on every call. The weights are read once, at
    construction, through `model.weight` (what `linearize` chose to read). Products count into
    `products`.

    On a chip that learns locally (`model.reads_tiles`) no weight is read: every product is a read
    through the tiles (`model.product`: forward reads, and transposed reads for J^T), q, k, v and
    the FFN's pre-activation are measured by forward reads at z0, and the slopes are evaluated on
    those measurements.
    """

    QKV = ("W_q", "W_k", "W_v")

    def __init__(self, model: EquilibriumTransformer, z0: torch.Tensor, eps: float = 1e-5):
        with torch.no_grad():
            self.m = model
            w = model.weight  # the parameters, or what `analog_ep.linear` substituted (a chip's weights)
            B, T, C = z0.shape
            self.shape, self.scale = (B, T, C), 1.0 / math.sqrt(model.head_dim)
            self.ln1, h1 = self._ln_stats(z0, w("ln1_w"), w("ln1_b"), eps)
            self.ln2, h2 = self._ln_stats(z0, w("ln2_w"), w("ln2_b"), eps)
            if model.reads_tiles("W_o"):  # local learning: reads through the tiles, in both directions
                self._qkv = lambda x: torch.cat(model.products(x, self.QKV), dim=-1)  # (..., C) -> (..., 3C)
                self._qkv_t = lambda g: sum(model.product(part, n, transpose=True)
                                            for part, n in zip(g.split(C, dim=-1), self.QKV))
                self._mm = model.product
                pre_activation = lambda x: model.product(x, "W_fc") + w("b_fc")  # noqa: E731
            else:
                W_qkv = torch.cat([w(n) for n in self.QKV], dim=1)  # (C, 3C)
                held = {n: w(n) for n in ("W_o", "W_fc", "W_proj")}
                self._qkv, self._qkv_t = (lambda x: x @ W_qkv), (lambda g: g @ W_qkv.t())
                self._mm = lambda x, n, transpose=False: x @ (held[n].t() if transpose else held[n])
                pre_activation = lambda x: torch.addmm(w("b_fc"), x, held["W_fc"])  # noqa: E731
            q, k, v = (model._heads(t) for t in self._qkv(h1).split(C, dim=-1))  # (B, H, T, dh)
            self.q, self.k, self.v = q, k, v
            scores = (q @ k.transpose(-2, -1)) * self.scale
            # attention probabilities, (B, H, T, T)
            self.probs = torch.softmax(scores.masked_fill(~model.causal[:T, :T], float("-inf")), dim=-1)
            u = pre_activation(h2.reshape(B * T, C))  # (BT, 4C)
            t = torch.tanh(_GELU_A * (u + 0.044715 * u ** 3))
            self.gelu_slope = 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * _GELU_A * (1 + 3 * 0.044715 * u * u)
        self.products = 0

    @staticmethod
    def _ln_stats(z, w, b, eps):
        centred = z - z.mean(-1, keepdim=True)
        rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        xhat = centred * rstd
        return (xhat, rstd, w), xhat * w + b

    @staticmethod
    def _ln_jvp(v, stats):
        xhat, rstd, w = stats
        return w * rstd * (v - v.mean(-1, keepdim=True) - xhat * (v * xhat).mean(-1, keepdim=True))

    @staticmethod
    def _ln_vjp(g, stats):  # LayerNorm's Jacobian (without the affine) is symmetric
        xhat, rstd, w = stats
        gw = g * w
        return rstd * (gw - gw.mean(-1, keepdim=True) - xhat * (gw * xhat).mean(-1, keepdim=True))

    def _merge(self, t):
        B, T, C = self.shape
        return t.transpose(1, 2).reshape(B, T, C)  # (B, H, T, dh) -> (B, T, C)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m, (B, T, C), probs = self.m, self.shape, self.probs
            dq, dk, dv = (m._heads(t) for t in self._qkv(self._ln_jvp(v, self.ln1)).split(C, dim=-1))
            ds = (dq @ self.k.transpose(-2, -1) + self.q @ dk.transpose(-2, -1)) * self.scale
            d_probs = probs * (ds - (probs * ds).sum(-1, keepdim=True))  # softmax Jacobian
            attn = self._mm(self._merge(d_probs @ self.v + probs @ dv), "W_o")
            du = self._mm(self._ln_jvp(v, self.ln2).reshape(B * T, C), "W_fc")
            ffn = self._mm(self.gelu_slope * du, "W_proj")
            self.products += 1
            return attn + ffn.reshape(B, T, C)

    def vjp(self, g: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m, (B, T, C), probs = self.m, self.shape, self.probs
            go = m._heads(self._mm(g, "W_o", True))  # (B, H, T, dh)
            g_probs = go @ self.v.transpose(-2, -1)
            gv = probs.transpose(-2, -1) @ go
            gs = probs * (g_probs - (g_probs * probs).sum(-1, keepdim=True)) * self.scale
            gq, gk = gs @ self.k, gs.transpose(-2, -1) @ self.q
            gh1 = self._qkv_t(torch.cat([self._merge(gq), self._merge(gk), self._merge(gv)], dim=-1))
            gu = self._mm(g.reshape(B * T, C), "W_proj", True) * self.gelu_slope
            gh2 = self._mm(gu, "W_fc", True).reshape(B, T, C)
            self.products += 1
            return self._ln_vjp(gh1, self.ln1) + self._ln_vjp(gh2, self.ln2)
