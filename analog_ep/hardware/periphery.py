"""Crossbar periphery and a fast vectorized read path.

Layout contract: a weight matrix W of shape (in, out), applied as x @ W, lives on a grid of
crossbar tiles. Its conductances in *tile units* (aihwkit weight units) are a zero-padded 4-D
tensor G of shape (n_row_tiles, n_col_tiles, tile_rows, tile_cols); tile (r, c) holds
W_tile[r*tile_rows:(r+1)*tile_rows, c*tile_cols:(c+1)*tile_cols]. Model units = scale * tile units.

`analog_matmul` reproduces aihwkit's IO-managed ONE_PASS forward (`AnalogMVM` in
aihwkit/simulator/tiles/analog_mvm.py, the same semantics as the RPUCuda C++ forward), per tile and
per input vector, with bound management off:

    alpha  = max_i |x_i| over the tile's rows          (NoiseManagementType.ABS_MAX; 0 -> 1)
    x_q    = clip(step_in * round(x / alpha / step_in), -inp_bound, inp_bound)           (DAC)
    y_a    = x_q @ G_tile + out_noise * N(0, 1)
    y_q    = clip(step_out * round(y_a / step_out), -out_bound, out_bound)                (ADC)
    y      = alpha * y_q

where aihwkit's `UniformQuantize` turns a resolution `res` (IOParameters.inp_res / out_res) into
the step `res * 2 * bound`, and a b-bit converter has res = 1 / (2**b - 2). Hence

    step = 2 * bound / (2**b - 2),  levels k * step for k in [-(2**(b-1) - 1), 2**(b-1) - 1],

i.e. 2**b - 1 symmetric levels including 0 with +-bound exactly representable (7-bit DAC: 127
levels of 1/63; 9-bit ADC over +-12: 511 levels of 24/510). Tiles are summed digitally.
"""
from __future__ import annotations

import threading

import torch

from analog_ep.schema.hardware import NOISE_MANAGEMENT, PeripheryConfig  # noqa: F401  (re-exported)



def to_tiles(W: torch.Tensor, tile_rows: int, tile_cols: int) -> torch.Tensor:
    """(in, out) -> the layout contract: zero-padded (n_row_tiles, n_col_tiles, tile_rows, tile_cols)."""
    d, o = W.shape
    R, C = -(-d // tile_rows), -(-o // tile_cols)
    padded = W.new_zeros(R * tile_rows, C * tile_cols)
    padded[:d, :o] = W
    return padded.view(R, tile_rows, C, tile_cols).permute(0, 2, 1, 3).contiguous()


def converter_step(bits: int, bound: float) -> float:
    """aihwkit's converter step: res = 1/(2**bits - 2) scaled by the range 2*bound."""
    return 2.0 * bound / (2 ** bits - 2)


def mismatch_gains(shape, sigma: float, clamp: tuple[float, float] = (0.2, 5.0),
                   generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Static per-device read gains clamp(1 + sigma * N(0, 1), *clamp), reproducible from `generator`."""
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype,
                    device=generator.device if generator is not None else None)
    return z.mul_(sigma).add_(1.0).clamp_(*clamp)


def quantize_levels(G: torch.Tensor, bits: int, w_min: float = -1.0, w_max: float = 1.0) -> torch.Tensor:
    """Round to the nearest programmable level (bits=0: G itself).

    The converters' convention: 2**bits - 1 symmetric levels k x step, |k| <= 2**(bits-1) - 1,
    step = max(-w_min, w_max) / (2**(bits-1) - 1), so 0 and +-the larger bound are levels (a zero
    weight reads as 0, and the level set does not depend on the sign). Values beyond a device's
    own bounds read as those bounds (a device cannot be programmed past them).
    """
    if bits == 0:
        return G
    top = 2 ** (bits - 1) - 1
    step = max(-w_min, w_max) / top
    return G.div(step).round_().clamp_(-top, top).mul_(step).clamp_(w_min, w_max)


def effective_conductances(G: torch.Tensor, cfg: PeripheryConfig, gains: torch.Tensor | None = None,
                           w_min: float = -1.0, w_max: float = 1.0) -> torch.Tensor:
    """What a read sees: the programmed level (weight quantization), times the device's static
    mismatch gain (from `mismatch_gains`). A device is programmed to a level and then reads with its
    own gain, so mismatch smaller than a level step still shows.

    Compute it once per weight change and hand it to `analog_matmul`, which reads G as given.
    """
    G = quantize_levels(G, cfg.weight_bits, w_min, w_max)
    return G if gains is None else G * gains


def _quantize_clip_(t: torch.Tensor, bits: int, bound: float) -> torch.Tensor:
    """In place: a b-bit converter over +-bound (integer levels clamped, so clip == round-then-clip)."""
    step = converter_step(bits, bound)
    top = 2 ** (bits - 1) - 1  # bound / step, an integer
    return t.div_(step).round_().clamp_(-top, top).mul_(step)


def _row_tiles(x2: torch.Tensor, n_row_tiles: int, rows: int) -> torch.Tensor:
    """(N, in) -> (R, N, rows): each row tile's input slice, zero-padded."""
    n, d = x2.shape
    pad = n_row_tiles * rows - d
    if pad:
        x2 = torch.nn.functional.pad(x2, (0, pad))
    return x2.view(n, n_row_tiles, rows).transpose(0, 1)


def _flat_columns(G: torch.Tensor, rows: int, out_features: int) -> torch.Tensor:
    """(R, C, tr, tc) -> (R, rows, out_features): column tiles side by side, padding cropped.

    In the forward direction column tiles share the input (and its noise-management scale), and
    every periphery step is per output column, so they form one wide tile without changing a bit.
    """
    R, C, tr, tc = G.shape
    if C == 1:
        return G[:, 0, :rows, :out_features]
    return G[:, :, :rows, :].permute(0, 2, 1, 3).reshape(R, rows, C * tc)[..., :out_features]


_WORKSPACE = threading.local()
_WORKSPACE_MAX = 1 << 24  # elements (64 MiB float32): larger draws are allocated, not kept


def _fresh_gaussian(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh N(0, 1) noise shaped like `like`, valid until the next call in this thread.

    float32 for float64 (torch's CPU float64 normal_ is not vectorized, measured 6x slower; 2**-24
    resolution is far below any physical noise) and a reused per-thread buffer (a fresh multi-MB
    tensor costs ~1 ms of page faults per call).
    """
    dtype = torch.float32 if like.dtype == torch.float64 else like.dtype
    n = like.numel()
    if like.device.type != "cpu" or n > _WORKSPACE_MAX:  # CUDA's caching allocator already reuses memory
        return torch.empty(like.shape, dtype=dtype, device=like.device).normal_(generator=generator)
    buf = getattr(_WORKSPACE, "noise", {}).get(dtype)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        _WORKSPACE.noise = {**getattr(_WORKSPACE, "noise", {}), dtype: buf}
    return buf[:n].view(like.shape).normal_(generator=generator)


class NoiseSource:
    """A chip's source of read noise: a seeded generator and a bank of pre-drawn N(0, 1) samples.

    Drawing Gaussians is the dominant cost of a noisy read on CPU (torch's sampler costs ~0.8 of a
    matmul of the same output size). The bank (`bank_size` samples, standardised to mean 0 and
    variance 1 exactly) is drawn once, from its own generator seeded with `generator`'s initial
    seed, so it depends on the seed alone and not on when it is first needed; each read takes a
    contiguous window at a uniformly random offset drawn from `generator`. Within a read all
    samples are distinct draws; a given output meets the same sample in two reads with
    probability 1/bank_size. `bank_size` 0 (or a read larger than half the bank) draws fresh
    samples from `generator` instead.

    The source's whole state is `generator`'s (`state_dict`); `fork(generator)` gives a source
    that shares the bank but draws from another generator (evaluation reads, which must not move
    the training stream).
    """

    def __init__(self, generator: torch.Generator, bank_size: int = 1 << 22, bank: "_Bank | None" = None):
        self.generator, self.bank_size = generator, bank_size
        self._bank = bank if bank is not None else _Bank(bank_size, generator.initial_seed())

    def gaussian(self, like: torch.Tensor) -> torch.Tensor:
        n = like.numel()
        if self.bank_size <= 0 or n > self.bank_size // 2 or like.device.type != "cpu":
            return _fresh_gaussian(like, self.generator)
        bank = self._bank.samples()
        offset = int(torch.randint(0, self.bank_size - n + 1, (1,), generator=self.generator))
        window = bank[offset: offset + n].view(like.shape)
        return window if like.dtype == torch.float32 else window.to(like.dtype)

    def fork(self, generator: torch.Generator) -> "NoiseSource":
        """A source sharing this one's bank, drawing offsets (and fresh samples) from `generator`."""
        return NoiseSource(generator, self.bank_size, self._bank)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class _Bank:
    """`size` standardised N(0, 1) samples drawn on first use from a generator seeded with `seed`."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._samples: torch.Tensor | None = None

    def samples(self) -> torch.Tensor:
        if self._samples is None:
            bank = torch.empty(self.size).normal_(generator=torch.Generator().manual_seed(self.seed)).double()
            self._samples = ((bank - bank.mean()) / bank.std()).float()
        return self._samples


def _gaussian(like: torch.Tensor, noise: "NoiseSource | torch.Generator | None") -> torch.Tensor:
    """N(0, 1) noise shaped like `like` (read-only: never modify it in place)."""
    if isinstance(noise, NoiseSource):
        return noise.gaussian(like)
    return _fresh_gaussian(like, noise)


def analog_matmul(x: torch.Tensor, G: torch.Tensor, scale: "float | torch.Tensor", cfg: PeripheryConfig,
                  out_features: int, generator: "NoiseSource | torch.Generator | None" = None) -> torch.Tensor:
    """x @ W through the tiles' periphery: (..., in) -> (..., out_features), model units.

    Per row tile and input vector: noise management, DAC, product with the tile's conductances,
    read noise, ADC, undo noise management; row tiles summed digitally; times `scale`; then optical
    noise. G is read as given: pass `effective_conductances(...)` for mismatch and weight levels.
    `scale` may be a per-output-column tensor (several arrays read side by side). `generator`: a
    `NoiseSource` (bank draws), a torch.Generator (fresh draws) or None (global RNG).
    """
    R, C, tr, tc = G.shape
    d = x.shape[-1]
    if not ((R - 1) * tr < d <= R * tr and out_features <= C * tc):
        raise ValueError(f"x (..., {d}) -> {out_features} outputs does not fit tiles {tuple(G.shape)}")
    lead = x.shape[:-1]
    rows = min(tr, d)  # one row tile: skip the zero-padded rows entirely
    xt = _row_tiles(x.reshape(-1, d), R, rows)  # (R, N, rows)

    alpha = None
    if cfg.noise_management == "abs_max":
        alpha = xt.abs().amax(-1, keepdim=True)
        alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))  # aihwkit: zero scale -> 1
        xt = xt / alpha
    if cfg.dac_bits:
        xt = _quantize_clip_(xt.clone() if alpha is None else xt, cfg.dac_bits, cfg.dac_bound)

    y = torch.bmm(xt, _flat_columns(G.to(x.dtype), rows, out_features))  # (R, N, out)
    if cfg.read_noise:
        y.add_(_gaussian(y, generator), alpha=cfg.read_noise)
    if cfg.adc_bits:
        _quantize_clip_(y, cfg.adc_bits, cfg.adc_bound)
    if alpha is not None:
        y.mul_(alpha)
    y = y[0] if R == 1 else y.sum(0)
    y.mul_(scale)
    if cfg.optical_noise:
        y.mul_(_gaussian(y, generator).mul(cfg.optical_noise).add_(1.0))
    return y.reshape(*lead, out_features)
