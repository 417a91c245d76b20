"""An analog chip: a model's weight matrices on crossbars, read through a periphery, written by pulses.

`AnalogChip(model, config)` maps every weight matrix of the force (and, if selected, the readout
and the embeddings) onto `CrossbarArray`s, programs them, and installs itself as the model's
`hardware`: from then on the relaxation's weight products run through `analog_matmul` with the
chip's DAC/ADC, read noise, optical noise, weight quantisation and static mismatch.

Once per training step `refresh()` reads every tile's conductances (one aihwkit read per tile),
applies the static non-idealities and caches the result, so the many products of a relaxation
are vectorised torch ops (a simulation device: on a chip the devices are simply there to be read
through). With `learning: coprocessor` the same read is the co-processor's knowledge:
`effective_weights()` hands those deterministic effective conductances (model units) to its
linear algebra (`analog_ep.linear`, reads='chip'), and `refresh()` mirrors them into the model's
parameters. With `learning: local` nothing in the update path reads them: `read()` (and
`TileProduct` in autograd) is every product of the estimator, forward reads with `periphery`
and transposed reads with `periphery_backward`; the mirrors only carry gradients (and
checkpoints).

Writes take the desired change of each matrix (model units) and realise it through the device:
'sign_pulse' sends at most one pulse per device per round (Lion's sign update), 'quantized'
rounds the change to whole pulses (at most `max_pulses`) stochastically, 'mixed_precision'
accumulates the change in a digital residual per weight and pulses a device only for the whole
pulse steps its residual holds (Nandakumar et al. 2020), 'ideal' sets the weights exactly.
'outer_product' (`write_outer`) takes rank-1 terms instead of a change: the in-memory update of
analog SGD, by stochastic pulse trains (`analog_ep.hardware.outer`). Any pulsed write may be
followed by write-verify (`chip.verify`).

The write controller is what a chip's digital controller would hold, and no more:

* Stochastic rounding. A change of q nominal pulses becomes floor(q) + 1 pulses with probability
  q - floor(q), drawn from the controller's own generator (seeded from the chip seed): unbiased,
  so updates far below one pulse still move the weights on average, with no per-weight memory
  (a residual accumulator would hold one digital word per device, as much memory as the weights).
* Weight decay W <- (1 - f) W (Lion's decoupled decay, whose sign updates carry none of it) owes
  f of every weight. The controller keeps one number per matrix, the decay fraction owed; once a
  weight at the top of the range owes half a pulse it reads the matrix through the periphery
  (`read_matrix`, one read per input row) and sends each device its stochastically rounded share
  toward zero.
* Program-and-verify reads through the periphery as well (converters, read noise, mismatch,
  levels), so it stops on what the chip sees; its report also says how far the devices really
  ended (`ProgramReport`).
* Mixed precision (`write: mixed_precision`) holds one digital word per weight, the residual in
  nominal pulse steps: the update is added to it, a device gets trunc(residual) pulses (at most
  `max_pulses`) and those leave the residual.
* Transfer (`write: transfer`, `chip.transfer`) holds a fast array per matrix (same device,
  programmed to 0, `<name>:fast` in the ledger and the schedule), one digital word per weight (the
  buffer H between the fast array and the weights), a chopper sign per column and a row pointer
  per matrix; its reads of the fast arrays are the controller's reads.
* Write-verify (`chip.verify`) holds the nominal value of every weight (its programmed target
  plus every pulse sent, times the nominal step) and, after a write, reads the pulsed arrays
  through the periphery and re-pulses the written devices that read further than the tolerance
  from their nominal values, round after round (`VerifyConfig`).
"""
from __future__ import annotations

import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.circuit.energy import ChipLoad
from analog_ep.errors import check
from analog_ep.hardware.cycle import CycleNoise
from analog_ep.hardware.device import DeviceConfig, construction_seed
from analog_ep.hardware.ledger import PulseLedger
from analog_ep.hardware.outer import coincidences, rounds
from analog_ep.hardware.periphery import (NoiseSource, analog_matmul, effective_conductances,
                                          mismatch_gains)
from analog_ep.hardware.tiles import CrossbarArray, ProgramReport
from analog_ep.model.base import EquilibriumModel
from analog_ep.schema.hardware import PROGRAMS, WRITES, ChipConfig  # noqa: F401  (re-exported)



class TileProduct(torch.autograd.Function):
    """y = x @ W (or x @ W^T) read through a chip's tiles, with a gradient a chip can compute.

    Forward: `AnalogChip.matmul` (the periphery's read). Backward: grad_x is a read of the same
    tiles in the other direction (itself a `TileProduct`, so products of products - a Jacobian
    penalty's second derivatives - are reads as well), and grad_W = u^T e, the outer product of
    the measured input u = x and the error e at the output side, summed over the token vectors
    (for x @ W^T: e^T u). W's value is never read: the carrier only receives its gradient.
    """

    @staticmethod
    def forward(x, carrier, chip, name, transpose):
        return chip.matmul(name, x.detach(), transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, carrier, chip, name, transpose = inputs
        ctx.save_for_backward(x, carrier)
        ctx.chip, ctx.name, ctx.transpose = chip, name, transpose

    @staticmethod
    def backward(ctx, grad):
        x, carrier = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.chip.read(ctx.name, grad, carrier, not ctx.transpose)
        if ctx.needs_input_grad[1]:
            u, e = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])  # (..., n) -> (vectors, n)
            grad_w = (e.t() @ u if ctx.transpose else u.t() @ e).to(carrier.dtype)
        return grad_x, grad_w, None, None, None


def device_bounds(device: DeviceConfig) -> tuple[float, float]:
    """Typical (w_min, w_max) a cell can hold, measured by writing far out of range and reading back."""
    tile = AnalogTile(64, 64, device.rpu_config(12345, seeded_noise=True))  # noiseless: bounds only
    tile.set_weights(torch.full((64, 64), 1e3))
    hi = float(tile.get_weights()[0].median())
    tile.set_weights(torch.full((64, 64), -1e3))
    lo = float(tile.get_weights()[0].median())
    return lo, hi


def _send(arr: CrossbarArray, pulses: torch.Tensor, step: int) -> tuple[int, int]:
    """Send whole pulses (signed counts, `arr`'s shape) as rounds: round k pulses the devices that
    owe >= k. Returns (pulses sent, rounds)."""
    rounds = int(pulses.abs().max()) if pulses.numel() else 0
    sent = 0
    for k in range(1, rounds + 1):
        sent += arr.pulse((torch.sign(pulses) * (pulses.abs() >= k)).to(torch.int8), step)
    return sent, rounds


class AnalogChip:
    """See module docstring."""

    def __init__(self, model: EquilibriumModel, config: ChipConfig, ledger: PulseLedger | None = None):
        self.model, self.config = model, config
        self.ledger = ledger if ledger is not None else PulseLedger()
        self.w_min, self.w_max = device_bounds(config.device)
        self.usable = usable = min(-self.w_min, self.w_max)
        check(usable > 0, "device.differential", config.device.differential,
              f"{config.device.model} holds only one sign (range [{self.w_min:g}, {self.w_max:g}])",
              "set device.differential: true to store each weight on a pair of devices")
        self.step_size = {}  # name -> model units moved by one nominal pulse
        self.arrays: dict[str, CrossbarArray] = {}
        self.gains: dict[str, torch.Tensor] = {}
        self.reports: dict[str, ProgramReport] = {}
        self.programming: dict[str, dict[str, torch.Tensor]] = {}  # name -> initial targets and device states
        self._G: dict[str, torch.Tensor] = {}
        self._shared: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._GT: dict[str, torch.Tensor] = {}  # transposed conductances for column reads
        self._effective: dict[str, torch.Tensor] = {}  # name -> effective weights, model units
        self._conductance: dict[str, float] = {}  # name -> summed conductance, tile units (pairs: both)
        # Per-read noise: seeded from the chip, drawn from a pre-drawn bank (see NoiseSource).
        self.noise = NoiseSource(torch.Generator().manual_seed(config.seed + 1), config.periphery.noise_bank)
        # Transposed reads (through the columns) use their own converters (`chip.periphery_backward`).
        self.periphery_backward = config.periphery_backward.resolve(config.periphery)
        #: Local learning (`chip.learning: local`): every product with a held matrix, in and out of
        #: autograd, is a read through the tiles (`read`); nothing reads the model's mirror.
        self.local = config.learning == "local"
        # The write controller's own randomness (stochastic rounding), seeded from the chip.
        self.write_generator = torch.Generator().manual_seed(config.seed + 2)
        self.decay_owed: dict[str, float] = {}  # matrix -> weight-decay fraction not yet written
        self.residual: dict[str, torch.Tensor] = {}  # mixed_precision: matrix -> residual, nominal pulse steps
        self.nominal: dict[str, torch.Tensor] = {}  # write-verify: matrix -> nominal weights, model units
        self.fast: dict[str, CrossbarArray] = {}  # transfer: matrix -> its fast array
        self.buffer: dict[str, torch.Tensor] = {}  # transfer: matrix -> H, model units
        self.chopper: dict[str, torch.Tensor] = {}  # transfer: matrix -> chopper sign per column
        self.transfer_row: dict[str, int] = {}  # transfer: matrix -> the next row of its fast array to read
        self.reads = 0  # matrix-vector reads the controller issued (verification, decay), not relaxations
        self.read_devices = 0  # devices those reads converted (rows x columns of each read matrix)
        gen = torch.Generator().manual_seed(config.seed)
        self.cycle_generator = torch.Generator().manual_seed(construction_seed(config.seed, "cycle noise", (0, 0)))
        self.cycle_noise = CycleNoise(config.device.device(0), config.device.differential, self.cycle_generator) \
            if config.cycle_noise == "seeded" else None
        for name in self._selected(model, config):
            W = model.get_parameter(name).detach().float().clone()  # refreshes overwrite the parameter
            scale = config.range_factor * float(W.abs().max().clamp_min(1e-8)) / usable
            arr = CrossbarArray(name, tuple(W.shape), config.device, config.tile_rows, config.tile_cols,
                                config.seed, scale, self.ledger, self.cycle_noise)
            self.arrays[name] = arr
            self.step_size[name] = config.device.dw_min * scale
            p = config.periphery
            self.gains[name] = mismatch_gains((*arr.grid, arr.tile_rows, arr.tile_cols), p.mismatch,
                                              p.mismatch_clamp, gen) if p.mismatch > 0 else None
            if config.program == "verify":
                self.reports[name] = arr.program(W, lambda n=name: self._fresh_read(n), config.program_tolerance,
                                                 config.program_rounds)
            else:
                arr.set(W)
                left = arr.read() - W
                self.reports[name] = ProgramReport(0, 0, float(left.abs().max()), float(left.pow(2).mean().sqrt()))
            self.programming[name] = {"target": W, "programmed": arr.device_conductances()}
            if config.verify.rounds > 0:
                self.nominal[name] = W.clone()
            if config.write == "transfer":
                fast = CrossbarArray(f"{name}:fast", tuple(W.shape), config.device, config.tile_rows,
                                     config.tile_cols, config.seed, scale, self.ledger, self.cycle_noise)
                fast.set(torch.zeros(W.shape))
                self.fast[name] = fast
                self.programming[f"{name}:fast"] = {"target": torch.zeros(W.shape),
                                                     "programmed": fast.device_conductances()}
                self.buffer[name] = torch.zeros(W.shape)
                self.chopper[name] = torch.ones(W.shape[1])
                self.transfer_row[name] = 0
        self.last_rounds = 0  # pulse rounds of the last write (the slowest array)
        self.last_pulses = 0  # pulses of the last write
        self.last_verify_pulses = 0  # of which write-verify's
        model.hardware = self
        self.refresh()

    @staticmethod
    def _selected(model: EquilibriumModel, config: ChipConfig) -> list[str]:
        names = [n for n, _ in model.weight_matrices()]
        if config.readout_on_tiles:
            names += [n for n, p in model.readout_parameters() if p.ndim == 2]
        if config.embeddings_on_tiles:
            names += [n for n, p in model.force_parameters() if model.param_group(n) == "embeddings"
                      and p.ndim == 2 and n not in names]
        return names

    # ---- reads -------------------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        return name in self.arrays

    @torch.no_grad()
    def refresh(self) -> None:
        """Read every tile once; cache effective conductances; mirror them into the model."""
        for name in self.arrays:
            self._refresh(name)

    @torch.no_grad()
    def _refresh(self, name: str) -> None:
        arr = self.arrays[name]
        G = effective_conductances(arr.read_tiles(), self.config.periphery, self.gains[name],
                                   self.w_min, self.w_max)
        if arr.grid == (1, 1):  # one tile: its zero padding only costs time in every product
            G = G[:, :, : arr.shape[0], : arr.shape[1]].contiguous()
        self._G[name] = G
        self._GT.pop(name, None)
        self._shared.clear()  # fused views are rebuilt from the fresh reads on first use
        self._effective.clear()  # rebuilt from the fresh reads on first use
        p = self.model.get_parameter(name)
        p.copy_(arr.assemble(G).to(p.dtype))
        self._conductance[name] = arr.conductance_sum() if self.config.device.differential else float(G.abs().sum())

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """name -> what a read of each held matrix means without noise and converters: the programmed
        level times the static mismatch gain, in model units and the model's dtype (detached; cached
        until the next read of the tiles)."""
        if not self._effective:
            for name, arr in self.arrays.items():
                dtype = self.model.get_parameter(name).dtype
                self._effective[name] = arr.assemble(self._G[name]).to(dtype)
        return dict(self._effective)

    @torch.no_grad()
    def read_matrix(self, name: str) -> torch.Tensor:
        """The matrix as the chip reads it, (in, out) model units: a one-hot input per row through
        the periphery (DAC, read noise, ADC, mismatch, levels), one matrix-vector read each."""
        rows, cols = self.arrays[name].shape
        self.reads += rows
        self.read_devices += rows * cols
        return self.matmul(name, torch.eye(rows))

    def _fresh_read(self, name: str) -> torch.Tensor:
        """`read_matrix` after the array's conductances changed (program-and-verify)."""
        self._refresh(name)
        return self.read_matrix(name)

    def matmul_shared(self, names: tuple[str, ...], x: torch.Tensor) -> list[torch.Tensor]:
        """x @ W for several matrices reading the same input (Q, K, V): one batched periphery call.

        Their column tiles sit side by side behind the same row tiles, so noise management, the
        DAC and the row-tile sums are shared exactly as on separate arrays, and every later step
        is per output column: the result is the same as separate reads, in one pass.
        """
        G, scale = self._shared.get(names) or self._build_shared(names)
        out = analog_matmul(x, G.to(x.dtype), scale.to(x.dtype), self.config.periphery, G.shape[-1], self.noise)
        return list(out.split([self.arrays[n].shape[1] for n in names], dim=-1))

    def _build_shared(self, names: tuple[str, ...]):
        arrays = [self.arrays[n] for n in names]
        rows = {a.shape[0] for a in arrays}
        check(len(rows) == 1 and len({a.tile_rows for a in arrays}) == 1, "names", names,
              "matrices read together must share their input rows")
        flats = []
        for n, a in zip(names, arrays):
            R, C, tr, tc = self._G[n].shape  # (R, C, tr, tc) -> (R, tr, C*tc) -> crop the padding
            flats.append(self._G[n].permute(0, 2, 1, 3).reshape(R, tr, C * tc)[..., : a.shape[1]])
        tr = min(f.shape[1] for f in flats)  # single-tile arrays are stored without row padding
        flats = [f[:, :tr] for f in flats]
        G = torch.cat(flats, dim=-1).unsqueeze(1)  # one wide column tile: (R, 1, tr, sum of outputs)
        scale = torch.cat([torch.full((a.shape[1],), a.scale) for a in arrays])
        self._shared[names] = (G, scale)
        return G, scale

    def matmul(self, name: str, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """x @ W (or x @ W^T, a read through the columns, with `chip.periphery_backward`'s
        converters and noise) on the crossbar, with its periphery."""
        arr, G = self.arrays[name], self._G[name]
        if transpose:  # swap the roles of rows and columns, tile by tile (cached until the next read)
            G = self._GT.get(name)
            if G is None:
                G = self._GT[name] = self._G[name].permute(1, 0, 3, 2).contiguous()
        out = arr.shape[0] if transpose else arr.shape[1]
        periphery = self.periphery_backward if transpose else self.config.periphery
        return analog_matmul(x, G.to(x.dtype), arr.scale, periphery, out, self.noise)

    def read(self, name: str, x: torch.Tensor, carrier: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """x @ W (or x @ W^T) read through the tiles, differentiable without knowing W (local learning).

        Outside autograd it is `matmul`. Inside, `TileProduct`: the gradient reaching the input is a
        read in the other direction (an error carried back across the crossbar by a transposed
        read, as aihwkit's `tile.backward`), and the gradient of the matrix is the outer product
        of the measured input and that error, delivered to `carrier` (the model's parameter, whose
        value is never read: only its shape and dtype).
        """
        check(not x.is_complex(), name, "complex state", "a chip reads real signals",
              "use a real estimator (ep.holomorphic: 0) with chip.learning: local")
        if torch.is_grad_enabled() and (x.requires_grad or carrier.requires_grad):
            return TileProduct.apply(x, carrier, self, name, transpose)
        return self.matmul(name, x, transpose)

    # ---- writes ------------------------------------------------------------------------------
    @torch.no_grad()
    def write(self, deltas: dict[str, torch.Tensor], step: int, pulse_counts: dict[str, int] | None = None,
              decay: dict[str, float] | None = None) -> int:
        """Realise the desired change of each held matrix (model units); returns pulses sent.

        `pulse_counts` (sign_pulse only) repeats a matrix's sign round that many times: the
        per-tensor gain of Lion's trust-ratio variant, as whole pulses. `decay` (matrix -> f)
        adds decoupled weight decay W <- (1 - f) W, for updates that do not carry it (Lion's signs):
        exact for 'ideal' writes, else owed and written as pulses (module docstring).
        """
        sent, self.last_rounds, self.last_verify_pulses = 0, 0, 0
        decay = decay or {}
        cap = self.config.max_pulses
        for name in dict.fromkeys([*deltas, *decay]):
            arr, delta = self.arrays[name], deltas.get(name)
            if self.config.write == "ideal":
                W = arr.read() * (1.0 - decay.get(name, 0.0))
                arr.set(W if delta is None else W + delta.float())
                continue
            if delta is None:
                pulses = torch.zeros(arr.shape)
            elif self.config.write == "sign_pulse":
                pulses = torch.sign(delta) * min((pulse_counts or {}).get(name, 1), cap)
            elif self.config.write == "transfer":
                self._write_fast(name, delta, step)
                pulses = self._transfer(name) if step % self.config.transfer.period == 0 else torch.zeros(arr.shape)
            elif self.config.write == "mixed_precision":
                owed = self.residual.get(name, torch.zeros(arr.shape)) + delta.float() / self.step_size[name]
                pulses = torch.trunc(owed).clamp_(-cap, cap)
                self.residual[name] = owed - pulses
            else:
                pulses = self.stochastic_round(delta / self.step_size[name]).clamp(-cap, cap)
            if name in decay:
                pulses = (pulses + self._decay_pulses(name, decay[name])).clamp(-cap, cap)
            written, rounds = _send(arr, pulses, step)
            sent += written
            if name in self.nominal:
                self.nominal[name] += pulses * self.step_size[name]
                verified, extra = self._verify(name, pulses != 0, step)
                sent, rounds = sent + verified, rounds + extra
                self.last_verify_pulses += verified
            self.last_rounds = max(self.last_rounds, rounds)  # arrays are written in parallel
        self.refresh()
        return sent

    def _write_fast(self, name: str, delta: torch.Tensor, step: int) -> None:
        """`write: transfer`: the update, times each column's chopper sign, onto the fast array in
        whole pulses, rounded stochastically (at most `max_pulses`)."""
        cap, fast = self.config.max_pulses, self.fast[name]
        _send(fast, self.stochastic_round(delta.float() * self.chopper[name] / self.step_size[name]).clamp(-cap, cap),
              step)

    def _transfer(self, name: str) -> torch.Tensor:
        """`write: transfer`: read the next `transfer.rows` rows of the fast array through the
        periphery, add lr x read x chopper to H, and return the whole nominal steps H now holds (at
        most `max_pulses`) as the pulses for the weights, taken out of H (`TransferConfig`)."""
        cfg, fast, step = self.config.transfer, self.fast[name], self.step_size[name]
        n_in, n_out = fast.shape
        rows = [(self.transfer_row[name] + k) % n_in for k in range(min(cfg.rows, n_in))]
        G = effective_conductances(fast.read_tiles(), self.config.periphery, None, self.w_min, self.w_max)
        read = analog_matmul(torch.eye(n_in)[rows], G, fast.scale, self.config.periphery, n_out, self.noise)
        self.reads += len(rows)
        self.read_devices += len(rows) * n_out
        H = self.buffer[name]
        H[rows] += cfg.lr * read * self.chopper[name]
        pulses = torch.zeros(fast.shape)
        pulses[rows] = torch.trunc(H[rows] / step).clamp_(-self.config.max_pulses, self.config.max_pulses)
        H[rows] -= pulses[rows] * step
        self.transfer_row[name] = (self.transfer_row[name] + len(rows)) % n_in
        if cfg.chopper > 0 and self.transfer_row[name] < len(rows):  # a pass over the rows ended
            flip = torch.rand(n_out, generator=self.write_generator) < cfg.chopper
            self.chopper[name][flip] *= -1
        return pulses

    def _verify(self, name: str, written: torch.Tensor, step: int) -> tuple[int, int]:
        """Write-verify of one array after a write (`VerifyConfig`): read it through the periphery
        and re-pulse the `written` devices that read further than the tolerance from their nominal
        values, toward them, until none does or the rounds run out; a device that read within the
        tolerance once is done (a later noisy read does not pulse it again, which would redraw its
        write noise). Returns (pulses, rounds)."""
        if not bool(written.any()):
            return 0, 0
        cfg, arr = self.config.verify, self.arrays[name]
        tolerance = cfg.tolerance * self.step_size[name]
        sent = rounds = 0
        pending = written.clone()
        while rounds < cfg.rounds:
            error = self.nominal[name] - self._fresh_read(name)
            pending &= error.abs() > tolerance  # a device that read within tolerance once is done
            if not bool(pending.any()):
                break
            sent += arr.pulse((torch.sign(error) * pending).to(torch.int8), step)
            rounds += 1
        return sent, rounds

    @torch.no_grad()
    def write_outer(self, terms: dict[str, tuple[torch.Tensor, torch.Tensor, float]], lrs: dict[str, float],
                    step: int, decay: dict[str, float] | None = None) -> int:
        """Rank-1 pulse-train updates (`analog_ep.hardware.outer`): matrix `name` changes by
        lrs[name] x scale x x^T d on average for its (x, d, scale) terms, realised as the coincidences
        of seeded stochastic trains, sent as pulse rounds through the devices (ledger included).
        `decay` adds weight decay as pulses toward zero (module docstring). Returns pulses sent."""
        cfg, sent, self.last_rounds = self.config, 0, 0
        decay = decay or {}
        for name in dict.fromkeys([*terms, *decay]):
            arr = self.arrays[name]
            up = torch.zeros(arr.shape, dtype=torch.int64)
            down = torch.zeros(arr.shape, dtype=torch.int64)
            if name in terms:
                x, d, scale = terms[name]
                up, down = coincidences(x, d, lrs[name] * scale, self.step_size[name], cfg.pulse_bits,
                                        cfg.bl_management, cfg.update_management, self.write_generator)
            if name in decay:
                owed = self._decay_pulses(name, decay[name]).long()
                up, down = up + owed.clamp(min=0), down + (-owed).clamp(min=0)
            count = 0
            for signs in rounds(up, down):
                sent += arr.pulse(signs, step)
                count += 1
            self.last_rounds = max(self.last_rounds, count)  # arrays are written in parallel
        self.refresh()
        return sent

    def stochastic_round(self, q: torch.Tensor) -> torch.Tensor:
        """floor(q) + 1 with probability q - floor(q), else floor(q): unbiased whole pulses."""
        low = torch.floor(q)
        return low + (torch.rand(q.shape, generator=self.write_generator, dtype=q.dtype) < q - low).to(q.dtype)

    def _decay_pulses(self, name: str, fraction: float) -> torch.Tensor:
        """Pulses toward zero for the weight decay owed by `name` (zeros until it is worth a read)."""
        owed = 1.0 - (1.0 - self.decay_owed.get(name, 0.0)) * (1.0 - fraction)
        # A weight at the top of the range (usable x scale) then owes half a nominal pulse.
        if owed * self.usable < 0.5 * self.config.device.dw_min:
            self.decay_owed[name] = owed
            return torch.zeros(self.arrays[name].shape)
        self.decay_owed[name] = 0.0
        return self.stochastic_round(-owed * self.read_matrix(name).float() / self.step_size[name])

    @torch.no_grad()
    def replay(self, ledger: PulseLedger, phase: str | None = "train") -> int:
        """Send a recorded schedule's pulses again, in order (e.g. onto a freshly built chip).

        With the same chip seed and a deterministic device the result is bit-identical; with
        cycle-to-cycle noise it is a new draw of the same schedule. Returns pulses sent.
        """
        sent = 0
        arrays = {**self.arrays, **{f.name: f for f in self.fast.values()}}
        for step, array, tile, signs in ledger.rounds(phase=phase):
            sent += arrays[array].pulse_tile(tile, torch.from_numpy(signs), step)
        self.refresh()
        return sent

    def load(self, g_max: float) -> ChipLoad:
        """What the held arrays present to a phase: every device's conductance summed (S; a device at
        the top of its range conducts g_max; a differential pair counts both devices, G+ + G-),
        their input and output lines, the weights held and the tallest array's rows."""
        rows = sum(arr.shape[0] for arr in self.arrays.values())
        cols = sum(arr.shape[1] for arr in self.arrays.values())
        devices = sum(arr.shape[0] * arr.shape[1] for arr in self.arrays.values())
        tallest = max((arr.shape[0] for arr in self.arrays.values()), default=0)
        return ChipLoad(sum(self._conductance.values()) / self.w_max * g_max, rows, cols, devices, tallest)

    def schedule_state(self) -> dict[str, dict]:
        """Per array, what a device-programming schedule holds besides the ledger (see
        `analog_ep.schedule`): scale, initial target weights (model units), the devices' states
        right after programming and now (tile units, `CrossbarArray.device_conductances`). The
        fast arrays of `write: transfer` are arrays of their own (`<name>:fast`, target 0)."""
        arrays = {**self.arrays, **{f.name: f for f in self.fast.values()}}
        return {name: {"scale": arr.scale, "shape": arr.shape, "target": self.programming[name]["target"],
                       "programmed": self.programming[name]["programmed"], "final": arr.device_conductances()}
                for name, arr in arrays.items()}

    @property
    def pulses(self) -> int:
        """Pulses sent to every array, the fast arrays of `write: transfer` included."""
        return sum(arr.pulses for arr in (*self.arrays.values(), *self.fast.values()))

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The chip's whole mutable state: every array's devices, the read-noise and cycle-noise
        generators, the write controller's generator and owed decay, and the ledger's length (the ledger itself is saved in run.h5). The static
        draws (device-to-device variation, mismatch gains, the noise bank) follow from the seed."""
        return {"arrays": {n: a.state_dict() for n, a in self.arrays.items()},
                "read_noise": self.noise.state_dict(), "cycle_generator": self.cycle_generator.get_state(),
                "ledger_rounds": len(self.ledger),
                # the write controller: stochastic rounding's generator, owed weight decay, its reads
                "write_generator": self.write_generator.get_state(), "decay_owed": dict(self.decay_owed),
                "reads": self.reads, "read_devices": self.read_devices,
                # mixed precision's residuals and write-verify's nominal weights (digital words per weight)
                "residual": {n: r.clone() for n, r in self.residual.items()},
                "nominal": {n: w.clone() for n, w in self.nominal.items()},
                # transfer: the fast arrays' devices, H, the chopper signs and the row pointers
                "fast": {n: f.state_dict() for n, f in self.fast.items()},
                "buffer": {n: h.clone() for n, h in self.buffer.items()},
                "chopper": {n: c.clone() for n, c in self.chopper.items()},
                "transfer_row": dict(self.transfer_row)}

    def load_state_dict(self, state: dict) -> None:
        for name, arr in self.arrays.items():
            arr.load_state_dict(state["arrays"][name])
        self.noise.load_state_dict(state["read_noise"])
        self.cycle_generator.set_state(state["cycle_generator"])
        self.write_generator.set_state(state["write_generator"])
        self.decay_owed, self.reads = dict(state["decay_owed"]), state["reads"]
        # states saved before mixed precision and write-verify existed hold neither
        self.read_devices = state.get("read_devices", 0)
        self.residual = {n: r.clone() for n, r in state.get("residual", {}).items()}
        self.nominal = {n: w.clone() for n, w in state.get("nominal", self.nominal).items()}
        for name, fast in self.fast.items():
            fast.load_state_dict(state["fast"][name])
        self.buffer = {n: h.clone() for n, h in state.get("buffer", {}).items()}
        self.chopper = {n: c.clone() for n, c in state.get("chopper", {}).items()}
        self.transfer_row = dict(state.get("transfer_row", {}))
        self.refresh()
