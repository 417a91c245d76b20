"""An analog chip: a model's weight matrices on crossbars, read through a periphery, written by pulses.

`AnalogChip(model, config)` maps every weight matrix of the force (and, if selected, the readout
and the embeddings) onto `CrossbarArray`s, programs them, and installs itself as the model's
`hardware`: from then on the relaxation's weight products run through `analog_matmul` with the
chip's DAC/ADC, read noise, optical noise, weight quantisation and static mismatch.

Once per training step `refresh()` reads every tile's conductances (one aihwkit read per tile),
applies the static non-idealities and caches the result, so the many products of a relaxation
are vectorised torch ops; it also copies the effective weights into the model's parameters, so
the digital parts of the estimator (the vector-field gradient, the AEP linearisation) see
exactly what the tiles hold.

Writes take the desired change of each matrix (model units) and realise it through the device:
'sign_pulse' sends at most one pulse per device per round (Lion's sign update), 'quantized'
rounds the change to whole pulses (at most `max_pulses`), 'ideal' sets the weights exactly.
"""
from __future__ import annotations

import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.errors import check
from analog_ep.hardware.device import DeviceConfig
from analog_ep.hardware.ledger import PulseLedger
from analog_ep.hardware.periphery import (NoiseSource, analog_matmul, effective_conductances,
                                          mismatch_gains)
from analog_ep.hardware.tiles import CrossbarArray, ProgramReport
from analog_ep.model.base import EquilibriumModel
from analog_ep.schema.hardware import PROGRAMS, WRITES, ChipConfig  # noqa: F401  (re-exported)



def device_bounds(device: DeviceConfig) -> tuple[float, float]:
    """Typical (w_min, w_max) a cell can hold, measured by writing far out of range and reading back."""
    tile = AnalogTile(64, 64, device.rpu_config(12345))
    tile.set_weights(torch.full((64, 64), 1e3))
    hi = float(tile.get_weights()[0].median())
    tile.set_weights(torch.full((64, 64), -1e3))
    lo = float(tile.get_weights()[0].median())
    return lo, hi


class AnalogChip:
    """See module docstring."""

    def __init__(self, model: EquilibriumModel, config: ChipConfig, ledger: PulseLedger | None = None):
        self.model, self.config = model, config
        self.ledger = ledger if ledger is not None else PulseLedger()
        self.w_min, self.w_max = device_bounds(config.device)
        usable = min(-self.w_min, self.w_max)
        check(usable > 0, "device.differential", config.device.differential,
              f"{config.device.model} holds only one sign (range [{self.w_min:g}, {self.w_max:g}])",
              "set device.differential: true to store each weight on a pair of devices")
        self.step_size = {}  # name -> model units moved by one nominal pulse
        self.arrays: dict[str, CrossbarArray] = {}
        self.gains: dict[str, torch.Tensor] = {}
        self.reports: dict[str, ProgramReport] = {}
        self._G: dict[str, torch.Tensor] = {}
        self._shared: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._GT: dict[str, torch.Tensor] = {}  # transposed conductances for column reads
        gen = torch.Generator().manual_seed(config.seed)
        for name in self._selected(model, config):
            W = model.get_parameter(name).detach().float()
            scale = config.range_factor * float(W.abs().max().clamp_min(1e-8)) / usable
            arr = CrossbarArray(name, tuple(W.shape), config.device, config.tile_rows, config.tile_cols,
                                config.seed, scale, self.ledger)
            if config.program == "verify":
                self.reports[name] = arr.program(W, config.program_tolerance, config.program_rounds)
            else:
                arr.set(W)
                self.reports[name] = ProgramReport(0, 0, float((arr.read() - W).abs().max()))
            self.arrays[name] = arr
            self.step_size[name] = config.device.dw_min * scale
            p = config.periphery
            self.gains[name] = mismatch_gains((*arr.grid, arr.tile_rows, arr.tile_cols), p.mismatch,
                                              p.mismatch_clamp, gen) if p.mismatch > 0 else None
        # Per-read noise: seeded from the chip, drawn from a pre-drawn bank (see NoiseSource).
        self.last_rounds = 0  # pulse rounds of the last write (the slowest array)
        self.last_pulses = 0  # pulses of the last write
        self.noise = NoiseSource(torch.Generator().manual_seed(config.seed + 1), config.periphery.noise_bank)
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
        for name, arr in self.arrays.items():
            G = effective_conductances(arr.read_tiles(), self.config.periphery, self.gains[name],
                                       self.w_min, self.w_max)
            if arr.grid == (1, 1):  # one tile: its zero padding only costs time in every product
                G = G[:, :, : arr.shape[0], : arr.shape[1]].contiguous()
            self._G[name] = G
            self._GT.pop(name, None)
            self._shared.clear()  # fused views are rebuilt from the fresh reads on first use
            p = self.model.get_parameter(name)
            p.copy_(arr.assemble(G).to(p.dtype))

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
        """x @ W (or x @ W^T, a read through the columns) on the crossbar, with its periphery."""
        arr, G = self.arrays[name], self._G[name]
        if transpose:  # swap the roles of rows and columns, tile by tile (cached until the next read)
            G = self._GT.get(name)
            if G is None:
                G = self._GT[name] = self._G[name].permute(1, 0, 3, 2).contiguous()
        out = arr.shape[0] if transpose else arr.shape[1]
        return analog_matmul(x, G.to(x.dtype), arr.scale, self.config.periphery, out, self.noise)

    # ---- writes ------------------------------------------------------------------------------
    @torch.no_grad()
    def write(self, deltas: dict[str, torch.Tensor], step: int, pulse_counts: dict[str, int] | None = None
              ) -> int:
        """Realise the desired change of each held matrix (model units); returns pulses sent.

        `pulse_counts` (sign_pulse only) repeats a matrix's sign round that many times: the
        per-tensor gain of Lion's trust-ratio variant, as whole pulses.
        """
        sent, self.last_rounds = 0, 0
        for name, delta in deltas.items():
            arr = self.arrays[name]
            if self.config.write == "ideal":
                arr.set(arr.read() + delta.float())
                continue
            if self.config.write == "sign_pulse":
                n = (pulse_counts or {}).get(name, 1)
                pulses = torch.sign(delta) * min(n, self.config.max_pulses)
            else:
                pulses = torch.round(delta / self.step_size[name]).clamp(-self.config.max_pulses,
                                                                         self.config.max_pulses)
            rounds = int(pulses.abs().max()) if pulses.numel() else 0
            self.last_rounds = max(self.last_rounds, rounds)  # arrays are written in parallel
            for k in range(1, rounds + 1):  # round k pulses the devices that still owe >= k pulses
                sent += arr.pulse((torch.sign(pulses) * (pulses.abs() >= k)).to(torch.int8), step)
        self.refresh()
        return sent

    @torch.no_grad()
    def replay(self, ledger: PulseLedger, phase: str | None = "train") -> int:
        """Send a recorded schedule's pulses again, in order (e.g. onto a freshly built chip).

        With the same chip seed and a deterministic device the result is bit-identical; with
        cycle-to-cycle noise it is a new draw of the same schedule. Returns pulses sent.
        """
        sent = 0
        for step, array, tile, signs in ledger.rounds(phase=phase):
            sent += self.arrays[array].pulse_tile(tile, torch.from_numpy(signs), step)
        self.refresh()
        return sent

    def total_conductance(self, g_max: float) -> float:
        """sum |G| over every device of the chip (S) at conductance g_max for w_max."""
        return sum(float(G.abs().sum()) for G in self._G.values()) / self.w_max * g_max

    @property
    def pulses(self) -> int:
        return sum(arr.pulses for arr in self.arrays.values())
