"""Fit an aihwkit device model to measured pulse data (`analog-ep fit-device`).

Input: conductance reads of devices pulsed one pulse at a time (`read_pulses`: the long CSV
format or aihwkit's two-column up/down ramps). Every pulse gives one observed step, the change
of conductance it caused, and the state it acted on. The state is the local mean of the
sequence's reads around the pulse *without* the two reads that form the step (so read and write
noise on those reads, which enter the step with opposite signs, do not bias the fit of a
step-size law against the state), in a window of `STATE_WINDOW` reads on each side.

Model (tile units w, the device's symmetry point at w = 0): a pulse of direction d moves a
device by d dw_min s_d(w) (clipped to [w_min, w_max]), s_d the update model's step law
(`MODELS`); the symmetry point is where an up and a down pulse move the device equally, so
the up/down bias `up_down` follows from the shape. The step law is fitted to the observed steps
by least squares (lmfit, Levenberg-Marquardt); `auto` fits every model and keeps the lowest
BIC = n ln(RSS / n) + k ln(n) over the n steps and k fitted parameters.

Noise, from the residual steps r = step - mean step: cycle-to-cycle noise multiplies each step
by (1 + dw_min_std xi) (aihwkit's law for every model written here: multiplicative noise), and a
read-visible noise redrawn at each pulse (write noise and read noise) adds n_i - n_(i-1). So
var(r) = dw_min_std^2 <s^2> + 2 N and the lag-1 covariance of consecutive residuals is -N:
both are separated. Repeated reads without a pulse (direction 0) measure the read noise R^2; the
write noise is what is left, N - R^2. Several devices: each is fitted alone (bounds and step
size, the shape shared) and the spread of their parameters is the device-to-device variation.

Units: with conductances in siemens (or uS, nS, mS) the tile unit is chosen so that the fitted
bounds span 2 (w_max - w_min = 2, as ReRamSB's [-0.75, 1.25]); `g0` is the conductance at w = 0
and `siemens_per_unit` the scale. With `norm` the data are tile units already and only the
origin moves to the symmetry point. A one-sided device (only up pulses, `one_sided`) has its
origin at the lowest conductance observed, w_min = 0, and is written as a differential pair.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analog_ep.errors import ConfigError, check
from analog_ep.schema.hardware import did_you_mean

#: Siemens per unit of each accepted conductance unit (`norm`: the data are tile units already).
UNITS = {"S": 1.0, "mS": 1e-3, "uS": 1e-6, "nS": 1e-9, "norm": None}
#: Columns of the long format, in this order.
LONG_COLUMNS = ("device", "cycle", "pulse", "direction", "conductance")
#: Reads on each side of a pulse averaged into the state it acted on (module docstring).
STATE_WINDOW = 4
#: Quantile of the states (each end) the fitted bounds may not lie inside: where the data saturate.
SATURATION = 0.01
#: Nodes of each direction's PiecewiseStep law.
PIECEWISE_NODES = 8


# ---- reading -------------------------------------------------------------------------------------

@dataclass
class PulseData:
    """Measured reads of one or more devices, in sequence order (conductance in data units)."""

    source: str
    """The file read (its name as given)."""
    sha256: str
    """The file's sha256, hex."""
    layout: str
    """'long' or 'two_column'."""
    device: np.ndarray
    """Device index of each read (0-based, in order of first appearance)."""
    sequence: np.ndarray
    """Sequence index of each read: the reads of one device in one continuous run of pulses."""
    direction: np.ndarray
    """+1 / -1: the read follows a pulse in that direction; 0: a read without a pulse."""
    conductance: np.ndarray
    """The read, in siemens (or tile units for `norm`)."""
    unit: str
    """The unit the file gave ('S', 'mS', 'uS', 'nS' or 'norm')."""

    @property
    def devices(self) -> int:
        return int(self.device.max()) + 1


def _unit_factor(unit: str) -> float | None:
    check(unit in UNITS, "--unit", unit, "unknown conductance unit", did_you_mean(unit, UNITS))
    return UNITS[unit]


def read_pulses(path: str | Path, unit: str = "S") -> PulseData:
    """The reads of a long-format CSV (with a header naming `LONG_COLUMNS`) or of an aihwkit
    two-column file (no header; line i holds the i-th read of an up ramp and of a down ramp, each
    read after one pulse of that ramp's direction, the ramps measured one after the other).

    Every problem is a one-line ConfigError naming the file, the line and how to fix it."""
    factor = _unit_factor(unit)
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise ConfigError("DATA", src, "file not found", "check the path")
    raw = path.read_bytes()
    if b"\0" in raw[:4096]:
        raise ConfigError("DATA", src, "a binary file, not CSV text", "give a CSV file (see docs/device_fitting.md)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError("encoding", f"byte {err.start}", "the file is not UTF-8 text", "save it as UTF-8 CSV",
                          src) from None
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    check(rows, "DATA", src, "the file is empty", "write one read per line (see docs/device_fitting.md)")
    head = [c.strip().lower() for c in rows[0]]
    digest = hashlib.sha256(raw).hexdigest()
    if head[:1] and not _is_number(head[0]):
        check(tuple(head) == LONG_COLUMNS, "header", ",".join(rows[0]), "not the long format's header",
              f"write the header {','.join(LONG_COLUMNS)}", src)
        check(len(rows) > 1, "DATA", src, "a header and no reads", "add one line per read under the header")
        device, seq, direction, g = _long(rows[1:], src)
        layout = "long"
    else:
        device, seq, direction, g = _two_column(rows, src)
        layout = "two_column"
    if factor is not None:
        g = g * factor
    return PulseData(src, digest, layout, device, seq, direction, g, unit)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _number(text: str, key: str, line: int, src: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"line {line}: {key}", text, "not a number", "write a plain number, e.g. 2.5e-5", src) from None
    check(math.isfinite(value), f"line {line}: {key}", text, "not a finite number",
          "remove the line or give the measured value", src)
    return value


def _long(rows: list[list[str]], src: str):
    names: dict[str, int] = {}
    records = []
    for k, row in enumerate(rows, start=2):
        check(len(row) == len(LONG_COLUMNS), f"line {k}", ",".join(row), f"expected {len(LONG_COLUMNS)} columns",
              f"write {','.join(LONG_COLUMNS)}", src)
        dev = names.setdefault(row[0].strip(), len(names))
        cycle, pulse = _number(row[1], "cycle", k, src), _number(row[2], "pulse", k, src)
        d = _number(row[3], "direction", k, src)
        check(d in (-1, 0, 1), f"line {k}: direction", row[3], "must be +1, -1 or 0", "1 up, -1 down, 0 a read", src)
        records.append((dev, cycle, pulse, int(d), _number(row[4], "conductance", k, src)))
    records.sort(key=lambda r: r[:3])
    arr = np.array(records, dtype=float)
    device = arr[:, 0].astype(int)
    # a device's reads form one sequence (its state carries over from cycle to cycle)
    return device, device.copy(), arr[:, 3].astype(int), arr[:, 4]


def _two_column(rows: list[list[str]], src: str):
    for k, row in enumerate(rows, start=1):
        check(len(row) == 2, f"line {k}", ",".join(row), "expected two columns (up ramp, down ramp)",
              "or a long-format file with the header " + ",".join(LONG_COLUMNS), src)
    up = np.array([_number(r[0], "up", k, src) for k, r in enumerate(rows, start=1)])
    down = np.array([_number(r[1], "down", k, src) for k, r in enumerate(rows, start=1)])
    n = len(rows)
    # the first read of each ramp is where it starts: it is not counted as a pulse's result
    direction = np.concatenate([[0], np.ones(n - 1, int), [0], -np.ones(n - 1, int)])
    return np.zeros(2 * n, int), np.repeat([0, 1], n), direction, np.concatenate([up, down])


# ---- steps ---------------------------------------------------------------------------------------

@dataclass
class Steps:
    """The observed steps: one per pulse whose previous read is in the same sequence."""

    device: np.ndarray
    """Device of each step."""
    direction: np.ndarray
    """+1 or -1."""
    state: np.ndarray
    """The state the pulse acted on (local mean of the reads, module docstring)."""
    step: np.ndarray
    """The observed change of the read."""
    next_of: np.ndarray
    """Index of the step that follows this one in its sequence (the next pulse, no read between),
    or -1."""
    pulses: int = 1
    """Pulses of one direction, with no read between, that each step spans."""


def pulse_steps(x: np.ndarray, data: PulseData, pulses: int = 1) -> Steps:
    """The steps of `data` with reads `x` (already in fit coordinates); with `pulses` > 1 each
    step is the change over that many consecutive pulses of one direction (overlapping spans)."""
    idx = []
    for s in np.unique(data.sequence):
        rows = np.flatnonzero(data.sequence == s)
        xs = x[rows]
        csum = np.concatenate([[0.0], np.cumsum(xs)])
        ds = data.direction[rows]
        for j in range(1, len(rows) - pulses + 1):
            if ds[j] == 0 or np.any(ds[j:j + pulses] != ds[j]):
                continue
            lo, hi = max(0, j - 1 - STATE_WINDOW), min(len(rows), j + 1 + STATE_WINDOW)
            total = csum[hi] - csum[lo] - xs[j] - xs[j - 1]
            count = hi - lo - 2
            state = total / count if count > 0 else xs[j - 1]
            idx.append((rows[j], state, xs[j + pulses - 1] - xs[j - 1], j))
    if not idx:
        return Steps(*(np.zeros(0) for _ in range(4)), np.zeros(0, int))
    rows = np.array([i[0] for i in idx])
    nxt = np.full(len(rows), -1)
    pos = {r: k for k, r in enumerate(rows)}
    for k, r in enumerate(rows):
        if r + 1 < len(data.sequence) and data.sequence[r + 1] == data.sequence[r] and r + 1 in pos:
            nxt[k] = pos[r + 1]
    return Steps(data.device[rows], data.direction[rows], np.array([i[1] for i in idx]),
                 np.array([i[2] for i in idx]), nxt, pulses)


def read_noise(x: np.ndarray, data: PulseData) -> tuple[float, int]:
    """(std, degrees of freedom) of repeated reads: reads without a pulse and the read before each."""
    groups, current = [], []
    for k in range(len(x)):
        if k > 0 and data.sequence[k] == data.sequence[k - 1] and data.direction[k] == 0:
            current = current or [x[k - 1]]
            current.append(x[k])
            continue
        if len(current) > 1:
            groups.append(current)
        current = []
    if len(current) > 1:
        groups.append(current)
    dof = sum(len(g) - 1 for g in groups)
    if dof == 0:
        return 0.0, 0
    return math.sqrt(sum(float(np.sum((np.array(g) - np.mean(g)) ** 2)) for g in groups) / dof), dof


# ---- models --------------------------------------------------------------------------------------

def _bias(up_down):
    """aihwkit's split of dw_min by up_down r: (up factor, down factor) = (1 + min(r, 0), 1 - max(r, 0))."""
    return 1.0 + np.minimum(up_down, 0.0), 1.0 - np.maximum(up_down, 0.0)


def _up_down_for(ratio):
    """The up_down r whose (up, down) factors are in the ratio up / down = `ratio`."""
    return np.where(ratio >= 1.0, 1.0 - 1.0 / ratio, ratio - 1.0)


@dataclass
class Model:
    """One aihwkit update law: its shape parameters and the relative step s_d(w) it gives."""

    name: str
    """aihwkit base class name (as in `BASE_DEVICES`)."""
    shape: dict
    """Shape parameter -> (initial value, lower bound, upper bound)."""
    about: str
    """The step law in one line (docs and the model table)."""

    def relative(self, w, d, p: dict, lo, hi):
        """s_d(w) >= 0 for bounds (lo, hi): the step of a pulse of direction d over dw_min."""
        with np.errstate(divide="ignore", invalid="ignore"):  # lo = 0: one-sided, no down branch
            return self._relative(np.asarray(w, float), d, p, np.asarray(lo, float), np.asarray(hi, float))

    def _relative(self, w, d, p: dict, lo, hi):
        if self.name == "SoftBounds":
            return np.where(d > 0, 1.0 - w / hi, 1.0 - w / lo)
        if self.name == "LinearStep":
            return np.where(d > 0, 1.0 - p["gamma_up"] * w / hi, 1.0 - p["gamma_down"] * w / lo)
        if self.name == "PowStep":
            omega = np.clip((hi - w) / (hi - lo), 0.0, 1.0)
            g_up, g_down = _bias(p["pow_up_down"])
            return np.where(d > 0, omega ** (p["pow_gamma"] * g_up), (1.0 - omega) ** (p["pow_gamma"] * g_down))
        if self.name == "ExpStep":
            z = 2.0 * p["a"] * w / (hi - lo) + p["b"]
            up = 1.0 - p["A_up"] * np.exp(p["gamma_up"] * z)
            down = 1.0 - p["A_down"] * np.exp(-p["gamma_down"] * z)
            return np.maximum(np.where(d > 0, up, down), 0.0)
        nodes = np.linspace(lo, hi, PIECEWISE_NODES) if np.ndim(lo) == 0 else None
        up = [p[f"up{k}"] for k in range(PIECEWISE_NODES)]
        down = [p[f"down{k}"] for k in range(PIECEWISE_NODES)]
        if nodes is not None:
            return np.where(d > 0, np.interp(w, nodes, up), np.interp(w, nodes, down))
        q = np.clip((w - lo) / (hi - lo), 0.0, 1.0) * (PIECEWISE_NODES - 1)
        grid = np.arange(PIECEWISE_NODES)
        return np.where(d > 0, np.interp(q, grid, up), np.interp(q, grid, down))

    def up_down(self, p: dict, lo, hi):
        """The up_down that puts the symmetry point at w = 0."""
        return _up_down_for(self.relative(0.0, -1, p, lo, hi) / np.maximum(self.relative(0.0, 1, p, lo, hi), 1e-12))

    def overrides(self, p: dict) -> dict:
        """The shape's aihwkit parameters (besides dw_min, up_down and the bounds)."""
        if self.name == "LinearStep":
            return {"gamma_up": p["gamma_up"], "gamma_down": p["gamma_down"], "mult_noise": True,
                    "mean_bound_reference": True}
        if self.name == "SoftBounds":
            return {"mult_noise": True}
        if self.name == "PowStep":
            return {"pow_gamma": p["pow_gamma"], "pow_up_down": p["pow_up_down"]}
        if self.name == "ExpStep":
            return {k: p[k] for k in ("a", "b", "A_up", "A_down", "gamma_up", "gamma_down")}
        return {"piecewise_up": [p[f"up{k}"] for k in range(PIECEWISE_NODES)],
                "piecewise_down": [p[f"down{k}"] for k in range(PIECEWISE_NODES)]}


MODELS = {m.name: m for m in (
    Model("SoftBounds", {}, "s_up = 1 - w/w_max, s_down = 1 - w/w_min"),
    Model("LinearStep", {"gamma_up": (0.5, -1.0, 1.0), "gamma_down": (0.5, -1.0, 1.0)},
          "s_up = 1 - gamma_up w/w_max, s_down = 1 - gamma_down w/w_min, hard bounds"),
    Model("PowStep", {"pow_gamma": (1.0, 0.01, 10.0), "pow_up_down": (0.0, -0.95, 0.95)},
          "s_up = omega^gamma_up, s_down = (1 - omega)^gamma_down, omega = (w_max - w)/(w_max - w_min)"),
    Model("ExpStep", {"a": (1.0, None, None), "b": (0.0, None, None), "A_up": (0.1, -50.0, 0.99),
                      "A_down": (0.1, -50.0, 0.99), "gamma_up": (1.0, -20.0, 20.0), "gamma_down": (1.0, -20.0, 20.0)},
          "s_d = max(1 - A_d exp(d gamma_d z), 0), z = 2 a w/(w_max - w_min) + b (a = 1, b = 0 fixed at the fit)"),
    Model("PiecewiseStep", {**{f"up{k}": (1.0, 0.0, 20.0) for k in range(PIECEWISE_NODES)},
                            **{f"down{k}": (1.0, 0.0, 20.0) for k in range(PIECEWISE_NODES)}},
          f"s_d interpolated on {PIECEWISE_NODES} nodes per direction over [w_min, w_max]"),
)}
#: Shape parameters held at their initial value (they would only rename another parameter).
FIXED = {"a", "b"}
#: The accepted spellings of each model name.
MODEL_NAMES = {**{m: m for m in MODELS}, **{"soft_bounds": "SoftBounds", "linear_step": "LinearStep",
               "pow_step": "PowStep", "exp_step": "ExpStep", "piecewise_step": "PiecewiseStep"}}


def model_name(name: str) -> str:
    """'auto', or the aihwkit name of a model given in either spelling (ConfigError otherwise)."""
    if name == "auto":
        return name
    check(name in MODEL_NAMES, "--model", name, "unknown device model", did_you_mean(name, ["auto", *MODEL_NAMES]))
    return MODEL_NAMES[name]


# ---- fitting -------------------------------------------------------------------------------------

@dataclass
class Estimate:
    """A fitted value and its standard error."""

    value: float
    """The value."""
    stderr: float
    """Its standard error (nan where the fit could not estimate one)."""


@dataclass
class ModelFit:
    """One update law fitted to the steps of all devices together (data coordinates x)."""

    model: str
    """aihwkit base class name."""
    params: dict
    """Every fitted parameter (dw_min, w_min, w_max, origin, shape) -> Estimate, in x units."""
    rss: float
    """Residual sum of squares of the steps (x units squared)."""
    n: int
    """Steps fitted."""
    k: int
    """Parameters fitted."""

    @property
    def bic(self) -> float:
        """Bayesian information criterion n ln(RSS/n) + k ln(n): lower is better."""
        return self.n * math.log(max(self.rss, 1e-300) / self.n) + self.k * math.log(self.n)

    @property
    def rms(self) -> float:
        """Root-mean-square step residual (x units)."""
        return math.sqrt(self.rss / self.n)

    def values(self) -> dict:
        return {k: v.value for k, v in self.params.items()}


def predicted(model: Model, p: dict, state, d, one_sided: bool, pulses: int = 1):
    """Mean change of `pulses` pulses of direction d from data coordinate `state` (each step
    clipped to the bounds). A state outside the bounds is a device at its bound seen through
    noise: its change is the bound's (not a jump onto the bound, which a fit would use to explain
    fast moves by a bound inside the data)."""
    lo, hi = (0.0, p["w_max"]) if one_sided else (p["w_min"], p["w_max"])
    w0 = w = np.clip(state - p["origin"], lo, hi)
    up_down = 0.0 if one_sided else model.up_down(p, lo, hi)
    f_up, f_down = _bias(up_down)
    scale = p["dw_min"] * np.where(d > 0, f_up, -f_down)
    for _ in range(pulses):
        w = np.clip(w + scale * model.relative(w, d, p, lo, hi), lo, hi)
    return w - w0


def fit_model(name: str, steps: Steps, one_sided: bool, origin: float | None = None,
              start: dict | None = None, free_shape: bool = True) -> ModelFit:
    """Least-squares fit of one model's mean step to the observed steps (lmfit)."""
    import lmfit

    model = MODELS[name]
    span = float(np.ptp(steps.state)) or 1.0
    typical = float(np.median(np.abs(steps.step))) or span * 1e-3
    params = lmfit.Parameters()
    init = start or {}
    lowest, highest = float(steps.state.min()), float(steps.state.max())
    # a piecewise law's nodes carry its scale, and its bounds its position: neither is fitted twice
    piecewise = name == "PiecewiseStep"
    params.add("dw_min", init.get("dw_min", typical), min=typical * 1e-3, vary=not piecewise)
    if one_sided:
        params.add("origin", lowest if origin is None else origin, vary=False)
        params.add("w_max", init.get("w_max", (highest - lowest) * 1.05), min=1e-6 * span)
    else:
        mid = 0.5 * (lowest + highest)
        o = init.get("origin", mid) if origin is None else origin
        params.add("origin", o, vary=origin is None and not piecewise)
        # the bounds in data coordinates, no nearer than where the data saturate (`SATURATION`
        # quantiles of the states): a device's reads cannot sit beyond its bounds
        floor, ceiling = np.quantile(steps.state, [SATURATION, 1.0 - SATURATION])
        top = max(init.get("w_max", highest - mid) + o, ceiling + 1e-6 * span)
        bottom = min(init.get("w_min", lowest - mid) + o, floor - 1e-6 * span)
        params.add("x_max", top, min=ceiling)
        params.add("x_min", bottom, max=floor)
        params.add("w_max", expr="x_max - origin")
        params.add("w_min", expr="x_min - origin")
    for key, (value, lo, hi) in model.shape.items():
        params.add(key, init.get(key, value), min=-np.inf if lo is None else lo, max=np.inf if hi is None else hi,
                   vary=free_shape and key not in FIXED)

    def residual(par):
        return predicted(model, par.valuesdict(), steps.state, steps.direction, one_sided, steps.pulses) - steps.step

    result = lmfit.minimize(residual, params, method="leastsq")
    out = {k: Estimate(float(v.value), float(v.stderr) if v.stderr is not None else math.nan)
           for k, v in result.params.items() if (v.vary or k in ("origin", "dw_min", "w_min", "w_max"))
           and k not in ("x_min", "x_max")}
    for key in ("w_min",) if not one_sided else ():
        out.setdefault(key, Estimate(float(result.params[key].value), math.nan))
    for key in model.shape:
        out.setdefault(key, Estimate(float(result.params[key].value), 0.0))
    return ModelFit(name, out, float(np.sum(result.residual ** 2)), len(steps.step), int(result.nvarys))


@dataclass
class Noise:
    """Noise estimates from the k-pulse changes and repeated reads (x units unless stated)."""

    dw_min_std: Estimate
    """Cycle-to-cycle noise, relative to the mean step (aihwkit dw_min_std)."""
    visible: Estimate
    """Std of the read-visible noise redrawn at each pulse (write and read noise together)."""
    read: Estimate
    """Std of repeated reads without a pulse (0, stderr nan: no repeated reads given)."""
    lags: np.ndarray = field(default=None, repr=False)
    """The pulse counts k fitted."""
    variance: np.ndarray = field(default=None, repr=False)
    """Mean squared deviation D_k^2 of the k-pulse changes about the mean path, per lag."""


#: Most pulses k of the k-pulse changes whose spread separates the noises (`noise`).
MAX_LAG = 200
#: Blocks of the delete-one-block jackknife that gives the noise's standard errors.
JACKKNIFE_BLOCKS = 20


def _mean_map(model: Model, p: dict, one_sided: bool, scales: np.ndarray | None):
    """w -> the mean state after one pulse of direction d (w relative to the origin), for the
    devices `dev`: the joint fit's law, or with `scales` (rows dw_up, dw_down, w_min, w_max per
    device, from `spread`) each device's own step sizes and bounds."""
    lo0, hi0 = (0.0 if one_sided else p["w_min"]), p["w_max"]
    f_up, f_down = _bias(0.0 if one_sided else model.up_down(p, lo0, hi0))

    def step(w, d, dev):
        if scales is None:
            lo, hi, s_up, s_down = lo0, hi0, p["dw_min"] * f_up, p["dw_min"] * f_down
        else:
            s_up, s_down, lo, hi = (scales[dev, c] for c in range(4))
        q = {**p, "w_min": lo, "w_max": hi}
        move = np.where(d > 0, s_up, -s_down) * model.relative(w, d, q, lo, hi)
        return np.clip(w + move, lo, hi)

    return step


def noise(fit: ModelFit, x: np.ndarray, data: PulseData, read: tuple[float, int], one_sided: bool,
          scales: np.ndarray | None = None) -> Noise:
    """Separate cycle-to-cycle from read-visible noise by the spread of k-pulse changes.

    From every read x_t followed by k pulses of one direction, D_k = x_(t+k) - x_t - (the mean
    path's change over those k pulses, started at x_t). Linearising the mean map about the path
    (w_(j+1) = w_j + m(w_j), phi_j = 1 + m'(w_j): soft bounds pull a deviation back, an AR(1)
    process), cycle-to-cycle noise sigma_c (a step m (1 + sigma_c xi)) and a read-visible noise
    sigma_w redrawn at each pulse give
        E[D_k^2] = sigma_c^2 A_k + sigma_w^2 B_k,
        A_k = sum_j m_j^2 prod_(i>j) phi_i^2,   B_k = 1 + prod_j phi_j^2,
    (B_k: the noise on x_(t+k), and the noise on x_t carried along the path). The mean of D_k^2
    over the starts, for k = 1..K, is fitted by weighted least squares (scipy curve_fit, weights
    and standard errors from a delete-one-block jackknife over the starts)."""
    from scipy.optimize import curve_fit

    model, p = MODELS[fit.model], fit.values()
    step = _mean_map(model, p, one_sided, scales)
    starts, run = [], []
    for s in np.unique(data.sequence):
        rows = np.flatnonzero(data.sequence == s)
        ds = data.direction[rows]
        length = np.zeros(len(rows), int)  # pulses of one direction that follow each read
        for j in range(len(rows) - 2, -1, -1):
            nxt = ds[j + 1]
            if nxt != 0:
                length[j] = 1 + (length[j + 1] if j + 2 < len(rows) and ds[j + 2] == nxt else 0)
        keep = length > 0
        starts.append(rows[keep])
        run.append(length[keep])
    t0, run = np.concatenate(starts), np.concatenate(run)
    d = data.direction[t0 + 1]
    dev = data.device[t0]
    K = int(max(2, min(MAX_LAG, np.max(run) // 4)))
    blocks = min(JACKKNIFE_BLOCKS, len(t0))
    block = (np.arange(len(t0)) * blocks) // len(t0)
    sums = np.zeros((3, blocks, K))  # D^2, A, B summed per block and lag
    count = np.zeros((blocks, K))
    w0 = x[t0] - p["origin"]
    w, a_k, prod = w0.copy(), np.zeros(len(t0)), np.ones(len(t0))
    h = 1e-6 * (p["w_max"] - (0.0 if one_sided else p["w_min"]))
    for k in range(1, K + 1):
        live = run >= k
        if not live.any():
            K = k - 1
            break
        nxt = step(w, d, dev)
        phi = (step(w + h, d, dev) - step(w - h, d, dev)) / (2 * h)
        a_k = a_k * phi ** 2 + (nxt - w) ** 2
        prod = prod * phi ** 2
        w = nxt
        idx = np.flatnonzero(live)
        dk = x[t0[idx] + k] - x[t0[idx]] - (w[idx] - w0[idx])
        for n, v in enumerate((dk ** 2, a_k[idx], 1.0 + prod[idx])):
            np.add.at(sums[n, :, k - 1], block[idx], v)
        np.add.at(count[:, k - 1], block[idx], 1)
    sums, count = sums[:, :, :K], count[:, :K]
    lags = np.arange(1, K + 1)

    def solve(drop: int | None, sigma=None):
        keep = np.arange(blocks) != drop if drop is not None else slice(None)
        n = count[keep].sum(axis=0)
        v, a, b = (sums[c][keep].sum(axis=0) / np.maximum(n, 1) for c in range(3))
        ok = n > 0
        start = np.linalg.lstsq(np.stack([a[ok], b[ok]], 1), v[ok], rcond=None)[0]
        p0 = np.sqrt(np.maximum(start, 1e-12 * max(float(v[ok].max()), 1e-300)))
        popt, _ = curve_fit(lambda ab, sc, sw: sc ** 2 * ab[0] + sw ** 2 * ab[1], np.stack([a[ok], b[ok]]), v[ok],
                            p0=p0, sigma=None if sigma is None else sigma[ok], bounds=(0.0, np.inf))
        return np.abs(popt), v

    jack_v = np.array([solve(g)[1] for g in range(blocks)])
    sigma = np.sqrt((blocks - 1) * np.var(jack_v, axis=0)) if blocks > 2 else None
    if sigma is not None:
        sigma = np.where(sigma > 0, sigma, np.max(sigma) or 1.0)
    (sc, sw), v = solve(None, sigma)
    jack = np.array([solve(g, sigma)[0] for g in range(blocks)]) if blocks > 2 else None
    se = np.sqrt((blocks - 1) * np.var(jack, axis=0)) if jack is not None else (math.nan, math.nan)
    std, dof = read
    return Noise(Estimate(float(sc), float(se[0])), Estimate(float(sw), float(se[1])),
                 Estimate(std, std / math.sqrt(2 * dof) if dof else math.nan), lags, v)


@dataclass
class Spread:
    """Device-to-device variation from per-device fits (aihwkit's *_dtod parameters)."""

    dw_min_dtod: Estimate
    """Relative std of the devices' step sizes."""
    up_down_dtod: Estimate
    """Std of the devices' up_down (absolute)."""
    w_max_dtod: Estimate
    """Relative std of the devices' upper bounds."""
    w_min_dtod: Estimate
    """Relative std of the devices' lower bounds."""
    means: dict
    """Mean over devices of dw_min, w_min, w_max (x units, origin shared) -> Estimate."""
    scales: np.ndarray = field(default=None, repr=False)
    """Per device (rows by device index): its up step, down step, w_min, w_max (x units), the
    mean path `noise` follows for that device."""
    shape: dict = field(default_factory=dict)
    """The shape refitted with every device at its own step sizes and bounds -> Estimate (empty:
    a law without shape parameters)."""


#: Rounds of (each device's step sizes and bounds | the shared shape) in `spread`.
SHAPE_ROUNDS = 4


def spread(fit: ModelFit, steps: Steps, one_sided: bool) -> Spread | None:
    """Fit each device alone (its step sizes and bounds; shape and origin the joint fit's) and
    return the spread. A law with a shape (LinearStep, PowStep, ExpStep) then has its shape
    refitted with every device at its own step sizes and bounds, and the devices refitted, for
    `SHAPE_ROUNDS` rounds: a shape fitted to devices pooled as one mistakes the spread of their
    bounds for a softer law. The refitted shape (with its standard errors) is in `shape`."""
    devices = np.unique(steps.device)
    if len(devices) < 2:
        return None
    model, p = MODELS[fit.model], fit.values()
    free = [k for k in model.shape if k not in FIXED] if model.name != "PiecewiseStep" else []
    shape = {}
    for round_ in range(SHAPE_ROUNDS + 1 if free else 1):
        rows, scales = [], np.zeros((int(devices.max()) + 1, 4))
        for dev in devices:
            mask = steps.device == dev
            sub = Steps(steps.device[mask], steps.direction[mask], steps.state[mask], steps.step[mask],
                        np.full(int(mask.sum()), -1))
            up, scales[dev] = _device_scales(model, p, sub, one_sided)
            rows.append(up)
        if free and round_ < SHAPE_ROUNDS:
            shape = _shape_given_devices(model, p, steps, one_sided, scales, free)
            p.update({k: v.value for k, v in shape.items()})
    arr = np.array(rows)  # columns: dw_min, up_down, w_min, w_max
    n = len(arr)

    def rel(col):
        m, s = float(np.mean(arr[:, col])), float(np.std(arr[:, col], ddof=1))
        return Estimate(abs(s / m), abs(s / m) / math.sqrt(2 * (n - 1)))

    ud = float(np.std(arr[:, 1], ddof=1))
    means = {k: Estimate(float(np.mean(arr[:, c])), float(np.std(arr[:, c], ddof=1) / math.sqrt(n)))
             for k, c in (("dw_min", 0), ("w_min", 2), ("w_max", 3))}
    return Spread(rel(0), Estimate(ud, ud / math.sqrt(2 * (n - 1))), rel(3),
                  rel(2) if not one_sided else Estimate(0.0, 0.0), means, scales, shape)


def _shape_given_devices(model: Model, p: dict, steps: Steps, one_sided: bool, scales: np.ndarray,
                         free: list[str]) -> dict:
    """The shape parameters `free` fitted (lmfit) with each device at its own step sizes and
    bounds (`scales`, rows by device: up step, down step, w_min, w_max)."""
    import lmfit

    par = lmfit.Parameters()
    for key in free:
        low, high = model.shape[key][1:]
        par.add(key, p[key], min=-np.inf if low is None else low, max=np.inf if high is None else high)
    # the origin too (the pooled fit's symmetry point moves with its shape), each device's bounds
    # held where they are in data coordinates; PowStep's law depends on w - w_max only (no origin)
    par.add("origin", p["origin"], vary=not one_sided and model.name != "PowStep")
    s_up, s_down, lo, hi = (scales[steps.device, c] for c in range(4))
    x_lo, x_hi = lo + p["origin"], hi + p["origin"]

    def residual(v):
        q = {**p, **v.valuesdict()}
        lo, hi = (0.0 * x_lo if one_sided else x_lo - q["origin"]), x_hi - q["origin"]
        q.update({"w_min": lo, "w_max": hi})
        w = np.clip(steps.state - q["origin"], lo, hi)
        move = np.where(steps.direction > 0, s_up, -s_down) * model.relative(w, steps.direction, q, lo, hi)
        return np.clip(w + move, lo, hi) - w - steps.step

    result = lmfit.minimize(residual, par, method="leastsq")
    return {k: Estimate(float(v.value), float(v.stderr) if v.stderr is not None else math.nan)
            for k, v in result.params.items()}


def _device_scales(model: Model, p: dict, steps: Steps, one_sided: bool) -> tuple[list[float], list[float]]:
    """(dw_min, up_down, w_min, w_max) of one device, its own up and down step scales and bounds,
    and (up step, down step, w_min, w_max) as its mean law uses them."""
    import lmfit

    par = lmfit.Parameters()
    par.add("s_up", p["dw_min"], min=0.0)
    par.add("s_down", p["dw_min"], min=0.0)
    par.add("w_max", p["w_max"], min=1e-9)
    if not one_sided:
        par.add("w_min", p["w_min"], max=-1e-9)

    def mean(v):
        lo, hi = (0.0, v["w_max"]) if one_sided else (v["w_min"], v["w_max"])
        q = {**p, "w_max": hi, "w_min": lo}
        w = steps.state - p["origin"]
        rel_up = model.relative(w, steps.direction, q, lo, hi)
        step = np.where(steps.direction > 0, v["s_up"], -v["s_down"]) * rel_up
        return np.clip(w + step, lo, hi) - w

    result = lmfit.minimize(lambda v: mean(v.valuesdict()) - steps.step, par, method="leastsq")
    v = result.params.valuesdict()
    lo = 0.0 if one_sided else v["w_min"]
    q = {**p, "w_max": v["w_max"], "w_min": lo}
    up = v["s_up"] * float(model.relative(0.0, 1, q, lo, v["w_max"]))
    down = v["s_down"] * float(model.relative(0.0, -1, q, lo, v["w_max"])) if not one_sided else up
    # aihwkit: up = dw (1 + min(r, 0)) f_up(0), down = dw (1 - max(r, 0)) f_down(0)
    fu = float(model.relative(0.0, 1, q, lo, v["w_max"]))
    fd = float(model.relative(0.0, -1, q, lo, v["w_max"])) if not one_sided else fu
    ratio = (up / max(fu, 1e-12)) / max(down / max(fd, 1e-12), 1e-300)
    r = float(_up_down_for(ratio)) if not one_sided else 0.0
    dw = max(v["s_up"], v["s_down"]) if not one_sided else v["s_up"]
    return [dw, r, lo, v["w_max"]], [v["s_up"], v["s_up"] if one_sided else v["s_down"], lo, v["w_max"]]


# ---- the whole fit -------------------------------------------------------------------------------

@dataclass
class DeviceFit:
    """A fitted device in tile units (symmetry point at w = 0) with its physical scale."""

    model: str
    """The chosen aihwkit base class."""
    overrides: dict
    """aihwkit parameters of the device file (`DeviceConfig.overrides`)."""
    stderr: dict
    """Standard error of each fitted override (tile units; nan where not estimated)."""
    differential: bool
    """One-sided data: the device is a pair (aihwkit OneSidedUnitCell)."""
    read_noise: Estimate
    """Std of a read (tile units): the periphery's read noise of a one-device read."""
    g0: float | None
    """Conductance at w = 0 in siemens (None for `norm` data)."""
    siemens_per_unit: float | None
    """Siemens per tile unit (None for `norm` data)."""
    table: list
    """Every model fitted: (name, rms step residual in tile units, BIC, parameters fitted)."""
    data: PulseData
    """The measurements."""
    steps: Steps
    """The observed steps (tile units)."""
    reads: np.ndarray = field(repr=False, default=None)
    """Every read in tile units."""
    steps_fitted: int = 0
    """Number of single-pulse steps measured."""
    span: int = 1
    """Pulses per fitted change (1: single steps; more where single steps are noise-dominated)."""


def fit_device(data: PulseData, model: str = "auto", one_sided: bool = False) -> DeviceFit:
    """Fit `model` ('auto': every model, lowest BIC) to `data`; the device in tile units."""
    name = model_name(model)
    src = data.source
    ups, downs = int(np.sum(data.direction > 0)), int(np.sum(data.direction < 0))
    if one_sided:
        check(downs == 0, "--one-sided", src, f"the data have {downs} down pulses",
              "drop --one-sided to fit both directions")
    else:
        check(ups > 0 and downs > 0, "direction", src, f"only {'up' if ups else 'down'} pulses "
              f"({ups} up, {downs} down)", "add --one-sided for a device that moves one way (a pair)")
    g = data.conductance
    if data.unit == "norm":
        centre, half = 0.0, 1.0
    else:
        centre, half = float(np.median(g)), float(np.ptp(g)) / 2
    for dev in range(data.devices):
        gd = g[data.device == dev]
        check(np.ptp(gd) > 0, "conductance", f"device {dev + 1}: {gd[0]:g}", "zero range: the device never moved",
              "drop that device's lines", src)
    x = (g - centre) / half
    steps = pulse_steps(x, data)
    names = list(MODELS) if name == "auto" else [name]
    need = max(4 + sum(1 for k in MODELS[n].shape if k not in FIXED) for n in names)
    check(len(steps.step) > need, "pulses", len(steps.step), f"fewer steps than {need} to fit "
          f"{name}'s parameters", "measure more pulses", src)
    fits = [fit_model(n, steps, one_sided) for n in names]
    span = _span(fits[0], x, read_noise(x, data), one_sided, data)
    if span > 1:  # noise-dominated single steps: fit the change over spans of pulses instead
        spans = pulse_steps(x, data, span)
        fits = [fit_model(n, spans, one_sided, start=f.values()) for n, f in zip(names, fits)]
    best = min(fits, key=lambda f: f.bic)
    p = best.values()
    mdl = MODELS[best.model]
    if mdl.name == "PiecewiseStep" and not one_sided:
        best, p = _piecewise_symmetric(best, steps)
    sd = spread(best, steps, one_sided)
    if sd is not None and sd.shape:  # the shape (and origin) as the devices, each at its own bounds, show it
        best.params.update(sd.shape)
        p.update({k: v.value for k, v in sd.shape.items()})
    nz = noise(best, x, data, read_noise(x, data), one_sided, sd.scales if sd is not None else None)
    # tile units: w = (x - origin) * k
    lo = 0.0 if one_sided else p["w_min"]
    est = {key: best.params[key] for key in best.params}
    if sd is not None:  # several devices: the bounds and step are their means
        est.update(sd.means)
    k = 1.0 if data.unit == "norm" else 2.0 / (est["w_max"].value - (0.0 if one_sided else est["w_min"].value))
    up_down = 0.0 if one_sided else float(mdl.up_down(p, lo, p["w_max"]))
    up_down = up_down if abs(up_down) > 1e-9 else 0.0  # a symmetric law's rounding error is no bias
    ov = {"dw_min": est["dw_min"].value * k, "up_down": up_down,
          "w_max": est["w_max"].value * k, "w_min": lo * k if one_sided else est["w_min"].value * k}
    se = {"dw_min": est["dw_min"].stderr * k, "w_max": est["w_max"].stderr * k,
          "w_min": 0.0 if one_sided else est["w_min"].stderr * k,
          "up_down": _derived_stderr(mdl, best, lo)}
    if mdl.name == "PiecewiseStep":
        ov.update(mdl.overrides(p))
    else:
        ov.update(mdl.overrides(p))
        for key in mdl.shape:
            if key not in FIXED:
                se[key] = best.params[key].stderr
    for key, value in (("dw_min_dtod", sd.dw_min_dtod if sd else None), ("up_down_dtod", sd.up_down_dtod if sd else None),
                       ("w_max_dtod", sd.w_max_dtod if sd else None), ("w_min_dtod", sd.w_min_dtod if sd else None)):
        ov[key] = value.value if value else 0.0
        se[key] = value.stderr if value else math.nan
    ov["dw_min_std"], se["dw_min_std"] = nz.dw_min_std.value, nz.dw_min_std.stderr
    write = math.sqrt(max(nz.visible.value ** 2 - nz.read.value ** 2, 0.0))
    ov["write_noise_std"] = write / p["dw_min"]
    se["write_noise_std"] = nz.visible.stderr / p["dw_min"]
    origin = p["origin"]
    g0 = None if data.unit == "norm" else centre + half * origin
    scale = None if data.unit == "norm" else half / k
    reads = (x - origin) * k
    tile_steps = Steps(steps.device, steps.direction, (steps.state - origin) * k, steps.step * k, steps.next_of)
    table = [(f.model, f.rms * k, f.bic, f.k) for f in fits]
    ov = {key: _plain(v) for key, v in ov.items()}
    return DeviceFit(best.model, ov, se, one_sided, Estimate(nz.read.value * k, nz.read.stderr * k), g0, scale,
                     table, data, tile_steps, reads, len(steps.step), span)


#: Fewest spans per sequence when single steps are too noisy to fit (`_span`).
MIN_SPANS = 25


def _span(fit: ModelFit, x: np.ndarray, read: tuple[float, int], one_sided: bool, data: PulseData) -> int:
    """Pulses per fitted step: 1, or where the read-visible noise of a step exceeds half its mean
    size, enough pulses that their mean change is twice that noise (at most a 25th of the
    shortest sequence)."""
    visible = noise(fit, x, data, read, one_sided).visible.value
    dw = fit.params["dw_min"].value
    if visible <= 0.5 * dw:
        return 1
    shortest = min(int(np.sum(data.sequence == s)) for s in np.unique(data.sequence))
    return int(max(1, min(math.ceil(2.0 * visible / dw), shortest // MIN_SPANS)))


def _plain(value):
    """Python floats (YAML and JSON friendly), rounded to 6 significant digits."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)):
        return value
    return float(f"{float(value):.6g}")


def _derived_stderr(model: Model, fit: ModelFit, lo: float) -> float:
    """Standard error of up_down (a function of the shape) by propagating the shape's errors."""
    p = fit.values()
    base = float(model.up_down(p, lo, p["w_max"]))
    total = 0.0
    for key in model.shape:
        err = fit.params[key].stderr
        if key in FIXED or not math.isfinite(err) or err == 0:
            continue
        q = dict(p)
        q[key] += err
        total += (float(model.up_down(q, lo, p["w_max"])) - base) ** 2
    return math.sqrt(total)


def _piecewise_symmetric(fit: ModelFit, steps: Steps) -> tuple[ModelFit, dict]:
    """A piecewise fit moved to its symmetry point and normalised to unit steps there."""
    from scipy.optimize import brentq

    model, p = MODELS["PiecewiseStep"], fit.values()
    lo, hi = p["w_min"], p["w_max"]

    def gap(w):
        return float(model.relative(w, 1, p, lo, hi) - model.relative(w, -1, p, lo, hi))

    grid = np.linspace(lo, hi, 201)
    vals = [gap(w) for w in grid]
    cross = [k for k in range(200) if vals[k] * vals[k + 1] <= 0]
    shift = brentq(gap, grid[cross[0]], grid[cross[0] + 1]) if cross else 0.0
    at = float(model.relative(shift, 1, p, lo, hi))
    q = {**p, "origin": p["origin"] + shift, "w_min": lo - shift, "w_max": hi - shift, "dw_min": p["dw_min"] * at}
    for key in model.shape:
        q[key] = p[key] / at
    params = dict(fit.params)
    for key in ("origin", "w_min", "w_max", "dw_min"):
        params[key] = Estimate(q[key], fit.params[key].stderr * (at if key == "dw_min" else 1.0))
    for key in model.shape:
        params[key] = Estimate(q[key], fit.params[key].stderr / at)
    return ModelFit(fit.model, params, fit.rss, fit.n, fit.k), q


# ---- output --------------------------------------------------------------------------------------

#: The periphery section of a fitted device file: ideal converters; the read noise is the fit's.
def _periphery(fit: DeviceFit) -> str:
    return (f"periphery:\n  weight_bits: 0           # analog continuum: the pulse step is the resolution\n"
            f"  # read noise, std of one device's read (tile units), from repeated reads: {_plain(fit.read_noise.value)}"
            f" ({'measured' if math.isfinite(fit.read_noise.stderr) else 'none given'}); a device file holds no\n"
            f"  # read noise (the chip's periphery does): set periphery.read_noise in the chip file\n"
            f"  mismatch: 0.0            # static read-gain spread: not measurable from pulse data\n")


def device_yaml(fit: DeviceFit, name: str, date: str) -> str:
    """The device file (the shipped format): header with provenance and uncertainties, then
    `device:` and `periphery:`."""
    data = fit.data
    scale = ("tile units = the data's normalised units" if fit.g0 is None else
             f"w = (G - {fit.g0:.6g} S) / {fit.siemens_per_unit:.6g} S")
    lines = [f"# {fit.model} fitted to {Path(data.source).name} by analog-ep fit-device ({name}).",
             "#",
             f"# Source {Path(data.source).name}, sha256 {data.sha256}, {data.layout} format, "
             f"{data.devices} device(s), {fit.steps_fitted} steps; fitted {date}.",
             f"# Physical scale: {scale} (symmetry point at w = 0).",
             f"# Model selection (BIC = n ln(RSS/n) + k ln n over the changes of {fit.span} pulse(s); their rms "
             "residual in tile units):"]
    for model, rms, bic, k in fit.table:
        mark = "  <- chosen" if model == fit.model else ""
        lines.append(f"#   {model:<14} rms {rms:.4g}  BIC {bic:.1f}  k {k}{mark}")
    lines.append("# Standard errors of the fitted parameters:")
    for key, err in fit.stderr.items():
        lines.append(f"#   {key}: {_plain(fit.overrides[key]) if key in fit.overrides else ''} +- {err:.2g}")
    lines += ["device:", f"  model: {fit.model}",
              f"  differential: {'true' if fit.differential else 'false'}"
              f"{'  # one-sided data: a pair of devices per weight' if fit.differential else ''}",
              "  overrides:"]
    for key, value in fit.overrides.items():
        text = f"[{', '.join(str(v) for v in value)}]" if isinstance(value, list) else \
            ("true" if value is True else "false" if value is False else repr(value))
        lines.append(f"    {key}: {text}")
    return "\n".join(lines) + "\n" + _periphery(fit)


def model_curves(fit: DeviceFit, w: np.ndarray, direction: int) -> np.ndarray:
    """Mean step of the fitted device at tile-unit states `w` (clipped to the bounds)."""
    ov, model = fit.overrides, MODELS[fit.model]
    p = {**ov, **{f"up{k}": v for k, v in enumerate(ov.get("piecewise_up", []))},
         **{f"down{k}": v for k, v in enumerate(ov.get("piecewise_down", []))}, "origin": 0.0}
    return predicted(model, p, w, np.full(np.shape(w), direction), fit.differential)


def plot_fit(fit: DeviceFit, path: Path, extra=None) -> None:
    """fit.png: left the pulse response with the model's mean and cycle-to-cycle band, right the
    step against the state, data and model. `extra`: (label, DeviceFit-like overrides, model) of a
    second model drawn dashed (docs: a preset against the fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    data, reads = fit.data, fit.reads
    first = data.sequence == data.sequence[0]
    dev0 = data.device == data.device[0]
    idx = np.flatnonzero(dev0)
    ax1.plot(np.arange(len(idx)), reads[idx], ".", ms=2, color="0.5", label="measured (first device)")
    mean, band = _mean_path(fit, data.direction[idx], data.sequence[idx], reads[idx])
    ax1.plot(np.arange(len(idx)), mean, color="C3", lw=1.2, label=f"{fit.model} fit: mean")
    lo, hi = (0.0 if fit.differential else fit.overrides["w_min"]), fit.overrides["w_max"]
    ax1.fill_between(np.arange(len(idx)), np.maximum(mean - band, lo), np.minimum(mean + band, hi), color="C3", alpha=0.2,
                     label="+- cycle-to-cycle spread")
    if extra is not None:  # the other model's mean path through the same pulses, from the same reads
        other = _mean_path(fit, data.direction[idx], data.sequence[idx], reads[idx], extra[1])[0]
        ax1.plot(np.arange(len(idx)), other, "--", color="k", lw=1.0, label=f"{extra[0]}: mean")
    ax1.set_xlabel("pulse")
    ax1.set_ylabel("w (tile units)")
    ax1.legend(fontsize=8)
    del first
    st = fit.steps
    lo, hi = (0.0 if fit.differential else fit.overrides["w_min"]), fit.overrides["w_max"]
    grid = np.linspace(lo, hi, 200)
    for d, colour, label in ((1, "C0", "up"), (-1, "C1", "down")):
        m = st.direction == d
        if not m.any():
            continue
        centres, means = _binned(st.state[m], st.step[m])
        ax2.plot(st.state[m], st.step[m], ".", ms=1, alpha=0.15, color=colour)
        ax2.plot(centres, means, "o", ms=4, color=colour, label=f"{label}: data (bin means)")
        ax2.plot(grid, model_curves(fit, grid, d), "-", color=colour, label=f"{label}: {fit.model}")
        if extra is not None:
            ax2.plot(grid, extra[1](grid, d), "--", color=colour, label=f"{label}: {extra[0]}")
    ax2.axhline(0, color="0.7", lw=0.5)
    top = 4.0 * max(float(np.max(np.abs(model_curves(fit, grid, d)))) for d in (1, -1))
    ax2.set_ylim(-top, top)  # the model's scale: single noisy steps run far off it
    ax2.set_xlabel("w before the pulse (tile units)")
    ax2.set_ylabel("step per pulse")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    from analog_ep.atomic import atomic_write

    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _binned(x: np.ndarray, y: np.ndarray, bins: int = 24):
    edges = np.linspace(x.min(), x.max(), bins + 1)
    which = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    keep = [k for k in range(bins) if np.sum(which == k) >= 5]
    return (np.array([0.5 * (edges[k] + edges[k + 1]) for k in keep]),
            np.array([y[which == k].mean() for k in keep]))


def _mean_path(fit: DeviceFit, direction, sequence, reads, law=None):
    """The model's mean trajectory through a device's pulse sequence (each sequence from its first
    read) and the std of its cycle-to-cycle spread around it (variance propagated step by step)."""
    mean, band = np.zeros(len(reads)), np.zeros(len(reads))
    var = 0.0
    for j in range(len(reads)):
        if j == 0 or sequence[j] != sequence[j - 1]:
            mean[j], var = reads[j], 0.0
        elif direction[j] == 0:
            mean[j] = mean[j - 1]
        else:
            at = np.array([mean[j - 1]])
            step = float((law(at, int(direction[j])) if law else model_curves(fit, at, int(direction[j])))[0])
            mean[j] = mean[j - 1] + step
            var += (fit.overrides["dw_min_std"] * step) ** 2
        band[j] = math.sqrt(var)
    return mean, band
