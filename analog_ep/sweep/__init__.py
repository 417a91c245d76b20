"""`analog-ep sweep`: a chip over a grid of settings and seeds, as ordinary run directories.

`SweepDefinition` (grid.py) resolves and validates the grid; `Sweep` (runner.py) runs its points
on a backend (backends.py: worker processes or Ray; worker.py: one point in its own process) and
keeps sweep.h5 (table.py) and the tolerance map (plot.py) current.
"""
from analog_ep.sweep.backends import LocalBackend, RayBackend, make_backend
from analog_ep.sweep.grid import Point, SweepDefinition
from analog_ep.sweep.runner import Sweep, SweepReport, summary_lines

__all__ = ["LocalBackend", "Point", "RayBackend", "Sweep", "SweepDefinition", "SweepReport", "make_backend",
           "summary_lines"]
