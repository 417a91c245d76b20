"""`analog-ep diagnose`: the fingerprint of a chip as programmed, or of a run's twin.

What is diagnosed:

* `CHIP` (a chip file): the chip as programmed from the configuration's initial weights; `--twin`
  defaults to `analog`, the chip as read through its periphery (`digital`: the same initial
  weights, ideal).
* `--checkpoint RUN`: the run's resolved configuration and its saved state. `--twin analog`
  rebuilds the run's chip - the same chip seed (device-to-device variation, mismatch), the same
  programming scales, the tiles' saved conductances - and reads it through its periphery, never
  the digital mirror of its weights; `digital` / `bptt` load those twins' weights. `--twin`
  defaults to `analog` when the run trained one, else to its first twin.
* neither: the built-in default configuration's digital model (`--twin analog`: its chip).

A chip file together with `--checkpoint` is refused: the run's own configuration defines its chip.
See `analog_ep.diagnostics.fingerprint` for what reading the chip means for each number.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from analog_ep.config import RunConfig, load_config, merge, parse_override
from analog_ep.diagnostics.fingerprint import fingerprint
from analog_ep.errors import ConfigError

TWINS = ("analog", "digital", "bptt")


def load_checkpoint(path: str) -> dict:
    """A run's state, or a one-line error saying why the file is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / "state.pt"
    if not p.is_file():
        raise ConfigError("--checkpoint", path, "no run state found", "point it at a run directory or its state.pt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several unrelated types for a non-checkpoint file
        raise ConfigError("--checkpoint", path, f"not a torch checkpoint ({type(err).__name__})",
                          "point it at a run directory or its state.pt") from None
    if not isinstance(state, dict) or "config" not in state or "twins" not in state:
        raise ConfigError("--checkpoint", path, "not an analog-ep run state (no config/twins)",
                          "point it at a run directory or its state.pt")
    return state


def diagnose(chip: str | None = None, checkpoint: str | None = None, twin: str | None = None,
             overrides: list[str] = (), batch: int = 4) -> tuple[dict, str]:
    """(the fingerprint, one line saying what was diagnosed); see module docstring."""
    from analog_ep.run.loop import build

    if chip is not None and checkpoint is not None:
        raise ConfigError("CHIP", chip, "given together with --checkpoint (a run's own configuration defines "
                          "its chip)",
                          "drop CHIP to diagnose the run, or --checkpoint to diagnose the chip as programmed")
    state = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        cfg = merge(RunConfig(), yaml.safe_load(state["config"]), checkpoint)
        for text in overrides:
            cfg = merge(cfg, parse_override(text), "--set")
        cfg = cfg.resolve()
        available = list(state["twins"])
        twin = twin or ("analog" if "analog" in available else available[0])
        if twin not in available:
            raise ConfigError("--twin", twin, "not in this run", f"use one of {', '.join(available)}")
    else:
        cfg = load_config(chip, list(overrides))
        twin = twin or ("analog" if chip is not None else "digital")
    if twin not in TWINS:
        raise ConfigError("--twin", twin, "unknown twin", f"use one of {', '.join(TWINS)}")
    corpus, model = build(cfg)
    source = f"run {checkpoint}" if checkpoint else (f"chip file {chip}" if chip else "built-in defaults")
    if twin == "analog":
        from analog_ep.train.analog import AnalogTwin

        # The run's chip: the same seed and the same programming scales (from the same initial
        # weights), then the tiles' saved conductances and the digital parameters.
        analog = AnalogTwin(model, cfg.chip, cfg.relax, cfg.ep, cfg.optim, cfg.schedule, cfg.stabilizers)
        if state is not None:
            analog.load_state_dict(state["twins"]["analog"])
        model, reads = analog.model, "chip"
        what = "analog twin: the chip " + ("as trained" if state is not None else "as programmed") + \
            " read through its periphery"
    else:
        if state is not None:
            model.load_state_dict(state["twins"][twin]["model"])
        reads = "parameters"
        what = f"{twin} twin: ideal weights" + ("" if state is not None else " (initial)")
    x, y = corpus.fixed_batches("val", batch, 1, seed=cfg.train.seed)[0]
    report = fingerprint(model, x, y, cfg.relax, cfg.ep, reads=reads)
    report["twin"] = twin
    return report, f"{what}; {source}"
