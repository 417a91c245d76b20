"""A weight matrix on a grid of simulated crossbar tiles.

W (in, out), applied as x @ W, is cut into tiles of (tile_rows, tile_cols): inputs drive rows
(word lines), outputs are read on columns (bit lines). Each tile is an aihwkit `AnalogTile`
holding its block transposed, (out, in), in tile weight units; model units = `scale` x tile units.
`scale` maps the tile's conductance range onto `range_factor` x max|W0| at programming time.

Reads return the conductances as a zero-padded (n_row_tiles, n_col_tiles, tile_rows, tile_cols)
tensor, the layout the vectorised periphery (`periphery.analog_matmul`) works on. Writes are
pulse rounds: a sign matrix S in {-1, 0, +1} of W's shape sends one pulse to each device with
S != 0 through aihwkit, so the device model decides the realised change. With a `CycleNoise`
the devices' cycle-to-cycle and write noise come from its seeded generator (see
`analog_ep.hardware.cycle`), so the array's whole state is `state_dict()`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from aihwkit.simulator.tiles import AnalogTile

from analog_ep.errors import check
from analog_ep.hardware.cycle import CycleNoise
from analog_ep.hardware.device import DeviceConfig, construction_seed
from analog_ep.hardware.ledger import PulseLedger

# Learning rate handed to aihwkit: far above any device's weight granularity, so the implicit
# pulse count saturates at the bit length of 1 -- exactly one pulse per device with S != 0.
_SATURATING_LR = 1e6


@dataclass
class ProgramReport:
    """What programming a matrix cost, and how far from its target it ended."""

    pulses: int
    """Pulses sent (0 for an ideal write)."""
    rounds: int
    """Verify iterations (pulse rounds)."""
    max_error: float
    """Largest |W - W_target| left in the devices, in model units (the simulator's knowledge: what
    the conductances hold, not what a read shows)."""
    rms_error: float = 0.0
    """Root-mean-square |W - W_target| left in the devices, in model units."""
    reads: int = 0
    """Matrix-vector reads the verification used (one per input row per verify read)."""
    read_error: float = 0.0
    """Largest |read - W_target| at the last verify read, in model units: what the chip saw."""


class CrossbarArray:
    """One weight matrix on crossbar tiles (see module docstring)."""

    def __init__(self, name: str, shape: tuple[int, int], device: DeviceConfig, tile_rows: int = 512,
                 tile_cols: int = 512, chip_seed: int = 0, scale: float = 1.0,
                 ledger: PulseLedger | None = None, noise: CycleNoise | None = None):
        """`noise`: the seeded cycle-to-cycle and write noise (None: aihwkit's own, unseeded)."""
        check(tile_rows >= 1 and tile_cols >= 1, "tile_size", (tile_rows, tile_cols), "must be >= 1")
        self.name, self.shape, self.device = name, tuple(shape), device
        self.tile_rows, self.tile_cols, self.scale, self.ledger = tile_rows, tile_cols, scale, ledger
        rows, cols = self.shape
        self.grid = (math.ceil(rows / tile_rows), math.ceil(cols / tile_cols))
        self.noise = noise if noise is not None and noise.active else None
        self.tiles: dict[tuple[int, int], AnalogTile] = {}
        self._nominal: dict[tuple[int, int], torch.Tensor] = {}  # hidden parameters as built
        self._offsets: dict[tuple[int, int], torch.Tensor | None] = {}  # visible write noise (out, in)
        for r in range(self.grid[0]):
            for c in range(self.grid[1]):
                (r0, r1), (c0, c1) = self._span(r, c)
                seed = construction_seed(chip_seed, name, (r, c))
                tile = AnalogTile(c1 - c0, r1 - r0, device.rpu_config(seed, seeded_noise=noise is not None))
                tile.set_learning_rate(_SATURATING_LR)
                self.tiles[(r, c)] = tile
                if self.noise is not None:
                    self._nominal[(r, c)] = tile.tile.get_hidden_parameters().clone()
                self._offsets[(r, c)] = None
        self.pulses = 0

    def _span(self, r: int, c: int) -> tuple[tuple[int, int], tuple[int, int]]:
        rows, cols = self.shape
        return ((r * self.tile_rows, min(rows, (r + 1) * self.tile_rows)),
                (c * self.tile_cols, min(cols, (c + 1) * self.tile_cols)))

    # ---- reads -------------------------------------------------------------------------------
    def read_tiles(self) -> torch.Tensor:
        """Conductances (tile units), zero-padded: (n_row_tiles, n_col_tiles, tile_rows, tile_cols)."""
        G = torch.zeros(*self.grid, self.tile_rows, self.tile_cols)
        for (r, c), tile in self.tiles.items():
            w, _ = tile.get_weights()  # (out, in) block
            offset = self._offsets[(r, c)]
            G[r, c, : w.shape[1], : w.shape[0]] = (w if offset is None else w + offset).t()
        return G

    def conductance_sum(self) -> float:
        """Sum over every device of its conductance, tile units: |w| per single device, G+ + G- per
        differential pair (both devices of a pair conduct; aihwkit keeps them as hidden weights)."""
        total = 0.0
        for tile in self.tiles.values():
            if self.device.differential:
                hidden = tile.get_hidden_parameters()
                total += sum(float(hidden[k].abs().sum()) for k in hidden if k.startswith("hidden_weights_"))
            else:
                total += float(tile.get_weights()[0].abs().sum())
        return total

    def read(self) -> torch.Tensor:
        """The matrix in model units, (in, out)."""
        return self.assemble(self.read_tiles())

    @property
    def devices_per_cell(self) -> int:
        """1, or 2 for a differential pair (G_plus, G_minus)."""
        return 2 if self.device.differential else 1

    def device_conductances(self) -> torch.Tensor:
        """Every device's conductance in tile units, (devices_per_cell, in, out).

        One device per cell: its conductance, the weight / scale. A differential cell (aihwkit
        OneSidedUnitCell): (G_plus, G_minus), weight = scale x (G_plus - G_minus); aihwkit keeps
        them as the hidden weights 1 (receives the +1 pulses) and 0 (receives the -1 pulses).
        """
        out = torch.zeros(self.devices_per_cell, *self.shape)
        for (r, c), tile in self.tiles.items():
            (r0, r1), (c0, c1) = self._span(r, c)
            if self.devices_per_cell == 2:
                names = tile.tile.get_hidden_parameter_names()
                hidden = tile.tile.get_hidden_parameters()
                blocks = [hidden[names.index("hidden_weights_1")], hidden[names.index("hidden_weights_0")]]
            else:
                blocks = [tile.get_weights()[0]]
            for k, block in enumerate(blocks):  # (out, in) block -> (in, out)
                out[k, r0:r1, c0:c1] = block.t()
        return out

    def assemble(self, G: torch.Tensor) -> torch.Tensor:
        """(nr, nc, tr, tc) tile units -> (in, out) model units."""
        nr, nc, tr, tc = G.shape
        full = G.permute(0, 2, 1, 3).reshape(nr * tr, nc * tc)  # rows of tiles, then columns
        return self.scale * full[: self.shape[0], : self.shape[1]]

    # ---- writes ------------------------------------------------------------------------------
    def set(self, W: torch.Tensor) -> None:
        """Ideal write: every conductance set to W / scale (clipped by the device's bounds)."""
        for (r, c), tile in self.tiles.items():
            (r0, r1), (c0, c1) = self._span(r, c)
            tile.set_weights((W[r0:r1, c0:c1] / self.scale).t().contiguous().float())
            if self.noise is not None:
                self._offsets[(r, c)] = self.noise.offset_after_set((c1 - c0, r1 - r0))

    def pulse(self, signs: torch.Tensor, step: int = 0, phase: str = "train") -> int:
        """One round: a pulse to every device where signs (in, out) is +-1. Returns pulses sent."""
        sent = 0
        for (r, c), tile in self.tiles.items():
            (r0, r1), (c0, c1) = self._span(r, c)
            block = signs[r0:r1, c0:c1]
            count = int(block.count_nonzero())
            if count == 0:
                continue
            if self.noise is not None:  # this round's cycle-to-cycle factors, from our generator
                self.noise.before_round(tile, self._nominal[(r, c)])
            # update(x, d) applies W_tile -= lr * d^T x; with x = I and d = -block that is one
            # pulse per nonzero entry, in the direction of its sign.
            tile.update(torch.eye(r1 - r0), -block.float())
            if self.noise is not None:
                self._offsets[(r, c)] = self.noise.offset_after_round(self._offsets[(r, c)], block)
            if self.ledger is not None:
                self.ledger.record(step, self.name, (r, c), block.to(torch.int8), phase=phase)
            sent += count
        self.pulses += sent
        return sent

    def pulse_tile(self, tile: tuple[int, int], signs: torch.Tensor, step: int = 0, phase: str = "replay") -> int:
        """One round on one tile: `signs` is that tile's (rows used, cols used) block."""
        (r0, r1), (c0, c1) = self._span(*tile)
        full = torch.zeros(self.shape, dtype=torch.int8)
        full[r0:r1, c0:c1] = torch.as_tensor(signs, dtype=torch.int8)
        return self.pulse(full, step, phase)

    def program(self, target: torch.Tensor, read: Callable[[], torch.Tensor], tolerance: float = 0.5,
                max_rounds: int = 200, start: torch.Tensor | None = None) -> ProgramReport:
        """Program-and-verify: read, pulse toward the target, repeat.

        `read()` is how the controller sees the matrix, (in, out) model units: an `AnalogChip`
        passes its periphery read (`AnalogChip.read_matrix`: converters, read noise, mismatch,
        levels); `self.read` is the simulator's noiseless view of the conductances, which no chip
        has. Devices whose read error exceeds `tolerance` x the nominal pulse step get one pulse per
        round toward their target; a device that has read within tolerance once is done (as a
        chip's verify marks it: re-pulsing it after a noisy read would redraw its write noise);
        stops when every device is done or after `max_rounds`. `start` (model units) is the
        as-fabricated state written first (default: zeros). The report counts the reads and says
        how far the devices really ended.
        """
        self.set(torch.zeros(self.shape) if start is None else start)
        step = self.device.dw_min * self.scale
        sent = rounds = reads = 0
        pending = torch.ones(self.shape, dtype=torch.bool)
        while True:
            error = target - read()
            reads += self.shape[0]
            pending &= error.abs() > tolerance * step  # a device that read within tolerance once is done
            if rounds >= max_rounds or not bool(pending.any()):
                break
            sent += self.pulse(torch.sign(error) * pending, step=0, phase="program")
            rounds += 1
        left = target - self.read()
        return ProgramReport(sent, rounds, float(left.abs().max()), float(left.pow(2).mean().sqrt()), reads,
                             float(error.abs().max()))

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the devices hold, per tile: the visible weights, aihwkit's hidden parameters
        (both conductances of a differential pair, each device's step sizes and bounds), its
        counters (`dump_extra`), the write-noise offsets, and the pulse count. A matrix read with
        `read()` is not enough: a pair's split and the float rounding of W / scale would be lost."""
        return {"pulses": self.pulses,
                "tiles": {rc: {"weights": t.tile.get_weights().clone(),
                               "hidden": t.tile.get_hidden_parameters().clone(),
                               "extra": t.tile.dump_extra(), "offset": self._offsets[rc]}
                          for rc, t in self.tiles.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pulses = state["pulses"]
        for rc, tile in self.tiles.items():
            saved = state["tiles"][rc]
            tile.tile.set_weights(saved["weights"])
            tile.tile.set_hidden_parameters(saved["hidden"])  # after the weights: restores a pair's split
            tile.tile.load_extra(saved["extra"], True)
            self._offsets[rc] = saved["offset"]
