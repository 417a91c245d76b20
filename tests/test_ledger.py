"""PulseLedger: exact round trips (memory, HDF5, CSV), counts, filters, compression, atomic writes."""
import csv
import math
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest
import torch

from analog_ep.errors import AnalogEPError, ConfigError
from analog_ep.hardware.ledger import LedgerConfig, LedgerError, PulseLedger

ARRAYS = ("W_q", "W_k", "W_v", "W_o")


def random_signs(rng, rows, cols, density):
    """Ternary signs with P(nonzero) = density, +1 and -1 equally likely."""
    pulse = rng.random((rows, cols)) < density
    return np.where(pulse, np.where(rng.random((rows, cols)) < 0.5, 1, -1), 0).astype(np.int8)


def random_run(seed=0, n=120):
    """(step, array, tile, signs, phase) rounds: programming then training, tiles up to 512x512."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        phase = "program" if i < n // 4 else "train"
        rows, cols = (512, 512) if i % 17 == 0 else tuple(rng.integers(1, 300, 2))
        density = (0.0, 0.002, 0.05, 0.5, 1.0)[i % 5]
        out.append((i // 3, ARRAYS[int(rng.integers(len(ARRAYS)))],
                    tuple(int(t) for t in rng.integers(0, 4, 2)),
                    random_signs(rng, int(rows), int(cols), density), phase))
    return out


def fill(ledger, run):
    # Mixed input types: the ledger must take torch int8, numpy of any int width, and lists.
    for k, (step, array, tile, signs, phase) in enumerate(run):
        if k % 3 == 0:
            signs = torch.from_numpy(signs)
        elif k % 3 == 1:
            signs = signs.astype(np.int64)
        ledger.record(step, array, tile, signs, phase=phase)
    return ledger


def assert_rounds_equal(got, want):
    got = list(got)
    assert len(got) == len(want)
    for (s, a, t, x), (s2, a2, t2, x2, _) in zip(got, want):
        assert (s, a, t) == (s2, a2, t2)
        assert x.dtype == np.int8 and x.shape == x2.shape
        np.testing.assert_array_equal(x, x2)


def assert_ledgers_equal(a, b):
    assert len(a) == len(b) and a.arrays == b.arrays and a.phases == b.phases
    np.testing.assert_array_equal(a.index, b.index)
    assert a.nbytes == b.nbytes and a.raw_bytes == b.raw_bytes
    assert a.buffered_rounds == b.buffered_rounds and a.config == b.config
    assert a.pulse_counts() == b.pulse_counts()
    for r1, r2 in zip(a.rounds(), b.rounds(), strict=True):
        assert r1[:3] == r2[:3]
        np.testing.assert_array_equal(r1[3], r2[3])


@pytest.fixture(scope="module")
def run():
    return random_run()


@pytest.fixture(scope="module")
def ledger(run):
    # 7 rounds per chunk: many sealed chunks plus a buffered tail (120 = 17*7 + 1).
    return fill(PulseLedger(LedgerConfig(chunk_rounds=7)), run)


def test_rounds_round_trip_exactly(ledger, run):
    assert len(ledger) == len(run) and ledger.buffered_rounds == len(run) % 7
    assert_rounds_equal(ledger.rounds(), run)
    assert ledger.raw_bytes == sum(x.size for *_, x, _ in run)
    print(f"\n{len(run)} rounds: {ledger.raw_bytes / 2**20:.2f} MiB raw -> "
          f"{ledger.nbytes / 2**20:.3f} MiB stored ({ledger.raw_bytes / ledger.nbytes:.1f}x)")


def test_pulse_counts(ledger, run):
    want = {}
    for *_, array, _tile, signs, phase in run:
        up, down = want.get(array, (0, 0))
        want[array] = (up + int((signs == 1).sum()), down + int((signs == -1).sum()))
    assert ledger.pulse_counts() == want
    train = {}
    for *_, array, _tile, signs, phase in run:
        if phase == "train":
            up, down = train.get(array, (0, 0))
            train[array] = (up + int((signs == 1).sum()), down + int((signs == -1).sum()))
    assert ledger.pulse_counts(phase="train") == train
    idx = ledger.index
    assert idx["n_up"].sum() == sum(u for u, _ in want.values())
    with pytest.raises(ValueError):
        idx["n_up"][0] = 5  # the index view is read-only


def test_filters(ledger, run):
    for array in ARRAYS:
        assert_rounds_equal(ledger.rounds(array=array), [r for r in run if r[1] == array])
    assert_rounds_equal(ledger.rounds(phase="program"), [r for r in run if r[4] == "program"])
    assert_rounds_equal(ledger.rounds(array="W_k", phase="train"),
                        [r for r in run if r[1] == "W_k" and r[4] == "train"])
    # A typo raises at the call, not at the first next(), and names what exists.
    with pytest.raises(LedgerError, match="'W_z' was never recorded.*'W_q'"):
        ledger.rounds(array="W_z")
    with pytest.raises(LedgerError, match="phase='trian'"):
        ledger.pulse_counts(phase="trian")


def test_invalid_signs_raise_and_record_nothing():
    ledger = PulseLedger()
    ledger.record(0, "W_q", (0, 0), np.zeros((4, 4), np.int8))
    bad = {
        "outside": np.array([[0, 2], [1, -1]], np.int8),
        "int8 -128": np.array([[-128, 0]], np.int8),
        "uint8 255": np.array([[255, 1]], np.uint8),
        "torch 3": torch.tensor([[3, 0]], dtype=torch.int8),
        "float": np.array([[1.0, -1.0]]),
        "bool": np.array([[True, False]]),
        "1-D": np.array([1, 0, -1], np.int8),
        "empty": np.zeros((0, 3), np.int8),
    }
    for name, signs in bad.items():
        with pytest.raises(LedgerError, match="W_k") as e:
            ledger.record(1, "W_k", (0, 1), signs)
        assert isinstance(e.value, AnalogEPError), name
        print(f"{name}: {e.value}")
    for args in [("x", "W_k", (0, 0)), (1, "W_k", (0,)), (1, "W_k", (-1, 0)), (1, "", (0, 0))]:
        with pytest.raises(LedgerError):
            ledger.record(*args, np.zeros((2, 2), np.int8))
    assert len(ledger) == 1 and ledger.arrays == ("W_q",)  # nothing half-recorded
    for field, value in [("chunk_rounds", 0), ("codec", "lz4")]:
        with pytest.raises(ConfigError, match=field):
            LedgerConfig(**{field: value})


def test_hdf5_round_trip_path_and_group(ledger, run, tmp_path):
    path = tmp_path / "pulses.h5"
    ledger.to_hdf5(path)
    back = PulseLedger.from_hdf5(path)
    assert_ledgers_equal(ledger, back)
    assert_rounds_equal(back.rounds(), run)

    with h5py.File(tmp_path / "run.h5", "w") as f:
        ledger.to_hdf5(f.create_group("hardware/pulses"))
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert_ledgers_equal(ledger, PulseLedger.from_hdf5(f["hardware/pulses"]))
        with pytest.raises(LedgerError, match="format"):
            PulseLedger.from_hdf5(f["hardware"])
    with h5py.File(tmp_path / "run.h5", "a") as f:
        with pytest.raises(LedgerError, match="already holds index"):
            ledger.to_hdf5(f["hardware/pulses"])

    # Recording on after a reload gives the same ledger, chunk layout included.
    extra = random_run(seed=1, n=20)
    fill(ledger_copy := PulseLedger.from_hdf5(path), extra)
    fill(back, extra)
    assert_ledgers_equal(ledger_copy, back)
    assert_rounds_equal(back.rounds(), run + extra)


def test_hdf5_decodes_from_its_own_description(ledger, run, tmp_path):
    """A reader with h5py, numpy and zlib only, following the attributes, gets the rounds back."""
    path = tmp_path / "pulses.h5"
    ledger.to_hdf5(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 1 and "most significant bit first" in f.attrs["packing"]
        index, arrays = f["index"][()], f["arrays"].asstr()[()]
        decoded = []
        for blob, (first, count, raw) in zip(f["chunks"], f["chunk_index"]):
            data = zlib.decompress(blob.tobytes())
            assert len(data) == raw
            pos = 0
            for row in index[first:first + count]:
                n = int(row["rows"]) * int(row["cols"])
                nb = math.ceil(n / 8)
                up = np.unpackbits(np.frombuffer(data, np.uint8, nb, pos))[:n].astype(np.int8)
                down = np.unpackbits(np.frombuffer(data, np.uint8, nb, pos + nb))[:n].astype(np.int8)
                pos += 2 * nb
                decoded.append((int(row["step"]), arrays[row["array_id"]],
                                (int(row["tile_row"]), int(row["tile_col"])),
                                (up - down).reshape(row["rows"], row["cols"])))
    assert_rounds_equal(decoded, run)


def test_empty_ledger_round_trips(tmp_path):
    empty = PulseLedger()
    empty.to_hdf5(tmp_path / "empty.h5")
    back = PulseLedger.from_hdf5(tmp_path / "empty.h5")
    assert len(back) == 0 and list(back.rounds()) == [] and back.pulse_counts() == {}
    with pytest.raises(LedgerError, match="no such file"):
        PulseLedger.from_hdf5(tmp_path / "missing.h5")


def test_atomic_write_leaves_existing_file_intact(ledger, tmp_path, monkeypatch):
    path = tmp_path / "pulses.h5"
    small = PulseLedger()
    small.record(0, "W_q", (0, 0), np.eye(3, dtype=np.int8))
    small.to_hdf5(path)
    before = path.read_bytes()

    calls = []
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        calls.append(name)
        if name == "chunks":  # index, arrays and phases are already written by then
            raise OSError("simulated: disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        ledger.to_hdf5(path)
    monkeypatch.undo()
    assert calls[:3] == ["index", "arrays", "phases"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulses.h5"]  # no temp file left
    assert len(PulseLedger.from_hdf5(path)) == 1


def test_csv_one_line_per_pulse(tmp_path):
    rng = np.random.default_rng(3)
    ledger = PulseLedger(LedgerConfig(chunk_rounds=2))
    run = [(s, a, (s % 2, 1), random_signs(rng, 5, 7, 0.3), "train") for s in range(5) for a in ("W_q", "W,odd")]
    fill(ledger, run)
    n = ledger.to_csv(tmp_path / "all.csv")
    with open(tmp_path / "all.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    want = [(str(s), a, str(t[0]), str(t[1]), str(r), str(c), str(x[r, c]))
            for s, a, t, x, _ in run for r, c in zip(*np.nonzero(x))]
    got = [(d["step"], d["array"], d["tile_row"], d["tile_col"], d["row"], d["col"], d["sign"]) for d in lines]
    assert got == want and n == len(want) == sum(sum(v) for v in ledger.pulse_counts().values())
    assert ledger.to_csv(tmp_path / "q.csv", array="W_q") == sum(ledger.pulse_counts()["W_q"])
    size = (tmp_path / "all.csv").stat().st_size
    print(f"\nCSV: {n} pulses, {size / n:.1f} bytes per pulse")


@pytest.mark.parametrize("codec", ["zlib", "bz2"])
def test_sparse_rounds_compress_far_below_raw(codec):
    rng = np.random.default_rng(4)
    ratios = {}
    for density in (0.001, 0.01, 0.1, 2 / 3):
        ledger = PulseLedger(LedgerConfig(codec=codec))
        for step in range(256):
            ledger.record(step, "W_q", (0, 0), random_signs(rng, 256, 256, density))
        assert ledger.buffered_rounds == 0  # exactly one sealed chunk
        ratios[density] = ledger.raw_bytes / ledger.nbytes
    print(f"\n{codec}: raw/stored by pulse density " +
          ", ".join(f"{d:.3g}: {r:.1f}x" for d, r in ratios.items()))
    assert ratios[0.001] > 150 and ratios[0.01] > 30 and ratios[0.1] > 8
    assert ratios[2 / 3] > 3.8  # dense random signs: the 2-bit packing alone gives 4x


def test_long_run_bounded_memory():
    rows = cols = 128
    n, density = 2000, 0.01

    def signs(i):  # regenerable from its index, so the check needs no copy of the run
        return random_signs(np.random.default_rng(i), rows, cols, density)

    ledger = PulseLedger()  # its speed: bench/ledger.py
    for i in range(n):
        ledger.record(i // 4, ARRAYS[i % 4], (i % 3, 0), signs(i))
        assert ledger.buffered_rounds < ledger.config.chunk_rounds

    # The same run again under tracemalloc (numpy reports its buffers to it).
    traced = PulseLedger()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        traced.record(i // 4, ARRAYS[i % 4], (i % 3, 0), signs(i))
    held, peak = (m - base for m in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    assert traced.nbytes == ledger.nbytes
    del traced

    for i, (step, array, tile, x) in enumerate(ledger.rounds()):
        if i % 97 == 0:
            np.testing.assert_array_equal(x, signs(i))
    print(f"\n{n} rounds {rows}x{cols} at {density:.0%}: raw {ledger.raw_bytes / 2**20:.1f} MiB, "
          f"stored {ledger.nbytes / 2**20:.2f} MiB ({ledger.raw_bytes / ledger.nbytes:.1f}x), "
          f"traced held {held / 2**20:.2f} MiB, peak {peak / 2**20:.2f} MiB")
    assert len(ledger) == n and i == n - 1
    # Sealed chunks compress ~50x; the tail (here 208 rounds) is held packed, 4x below raw.
    tail = ledger.buffered_rounds * rows * cols // 4
    assert ledger.nbytes - tail < (ledger.raw_bytes - 4 * tail) / 30
    assert ledger.nbytes < ledger.raw_bytes / 15
    # What is really held is what nbytes reports (plus the index's doubling slack and
    # small Python objects); the peak adds about one uncompressed chunk and one round's temporaries.
    assert held < 1.5 * ledger.nbytes + 200_000
    assert peak < held + 2 * 256 * rows * cols // 4 + 1_000_000


@pytest.mark.parametrize("cut", [0, 1, 6, 7, 8, 30, 35, 119, 120])
def test_truncate_then_record_on_equals_the_uninterrupted_ledger(run, cut, tmp_path):
    """A resumed run cuts run.h5's ledger back to its state and records on: the result must be the
    uninterrupted ledger byte for byte, chunk layout included (cuts inside sealed chunks, at chunk
    edges and inside the buffer)."""
    config = LedgerConfig(chunk_rounds=7)
    whole = fill(PulseLedger(config), run)
    prefix = fill(PulseLedger(config), run[:cut])
    cut_back = fill(PulseLedger(config), run)
    cut_back.truncate(cut)
    assert_ledgers_equal(cut_back, prefix)  # names interned after the cut are dropped too
    fill(cut_back, run[cut:])
    assert_ledgers_equal(cut_back, whole)
    assert cut_back._chunks == whole._chunks and cut_back._chunk_index == whole._chunk_index
    for name, ledger in (("whole", whole), ("cut", cut_back)):
        ledger.to_hdf5(tmp_path / f"{name}.h5")
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "cut.h5") as b:
        assert [bytes(c) for c in a["chunks"][()]] == [bytes(c) for c in b["chunks"][()]]
    with pytest.raises(LedgerError, match="truncate"):
        cut_back.truncate(len(cut_back) + 1)
