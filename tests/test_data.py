"""Text corpus and digits data: sizes, window consistency, determinism, errors."""
from pathlib import Path

import pytest
import torch

from analog_ep.data import CharCorpus, DigitsData, DigitsDataConfig, TextDataConfig
from analog_ep.errors import ConfigError

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")


@pytest.fixture(scope="module")
def corpus():
    return CharCorpus.from_config(TextDataConfig(context=64))


def test_default_corpus_size_vocab_entropy(corpus):
    n = len(corpus.train) + len(corpus.val)
    assert 450_000 < n < 480_000
    assert corpus.vocab_size == 103
    assert len(corpus.val) == int(n * 0.1)
    assert corpus.unigram_entropy() == pytest.approx(3.25, abs=0.05)


def test_encode_decode_round_trip(corpus):
    s = "def f(x):\n    return x"
    ids = corpus.encode(s)
    assert ids.dtype == torch.int64 and ids.shape == (len(s),)
    assert corpus.decode(ids) == s
    assert corpus.decode(corpus.val[:200]) == corpus.decode(corpus.val[:100]) + corpus.decode(corpus.val[100:200])
    with pytest.raises(KeyError):
        corpus.encode("\u263a")


def test_batch_windows_are_shifted_text(corpus):
    x, y = corpus.batch("train", 8, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every window is a contiguous piece of the training text.
    text = corpus.decode(corpus.train)
    for row_x, row_y in zip(x, y):
        assert corpus.decode(torch.cat([row_x, row_y[-1:]])) in text


def test_fixed_batches_reproducible(corpus):
    a = corpus.fixed_batches("val", 4, 3, seed=7)
    b = corpus.fixed_batches("val", 4, 3, seed=7)
    c = corpus.fixed_batches("val", 4, 3, seed=8)
    assert len(a) == 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert int(a[0][0].max()) < corpus.vocab_size


def test_unknown_split_rejected(corpus):
    with pytest.raises(ConfigError, match="split"):
        corpus.batch("test", 2, torch.Generator())


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared tiny Shakespeare not present")
def test_any_file_loads():
    c = CharCorpus.from_config(TextDataConfig(path=str(SHAKESPEARE), context=32))
    assert c.vocab_size == 65
    x, y = c.batch("val", 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 32)


def test_bad_path_names_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match="nope.txt"):
        CharCorpus.from_config(TextDataConfig(path=str(missing)))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.txt.*empty"):
        CharCorpus.from_config(TextDataConfig(path=str(empty)))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\xfa" * 100)
    with pytest.raises(ConfigError, match="blob.bin"):
        CharCorpus.from_config(TextDataConfig(path=str(binary)))


def test_too_short_text_names_the_path(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 30)  # 300 chars: val tail of 30 < context+2
    with pytest.raises(ConfigError, match="short.txt.*val split"):
        CharCorpus.from_config(TextDataConfig(path=str(short), context=64))
    c = CharCorpus.from_config(TextDataConfig(path=str(short), context=20))  # 30 >= 22: fine
    assert c.vocab_size == 10


@pytest.mark.parametrize("kwargs", [dict(val_fraction=0.0), dict(val_fraction=1.0), dict(context=0)])
def test_text_config_validation(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        TextDataConfig(**kwargs)


# ---- digits -------------------------------------------------------------------------------------------
def test_digits_split_deterministic_and_stratified():
    a = DigitsData.from_config(DigitsDataConfig())
    b = DigitsData.from_config(DigitsDataConfig())
    c = DigitsData.from_config(DigitsDataConfig(seed=1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert a.x_train.shape == (len(a.y_train), 64) and a.x_train.dtype == torch.float32
    assert a.y_train.dtype == torch.int64
    assert len(a.y_train) + len(a.y_test) == 1797
    assert len(a.y_test) == pytest.approx(0.2 * 1797, abs=1)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) == 1.0
    # Stratified: every class's share of the test set matches its share of the train set.
    p_tr = torch.bincount(a.y_train, minlength=10).double() / len(a.y_train)
    p_te = torch.bincount(a.y_test, minlength=10).double() / len(a.y_test)
    assert torch.allclose(p_tr, p_te, atol=0.005)


def test_digits_unscaled_keeps_levels():
    d = DigitsData.from_config(DigitsDataConfig(scale=False))
    assert float(d.x_train.max()) == 16.0


def test_digits_batches_cover_epoch_and_reshuffle():
    d = DigitsData.from_config(DigitsDataConfig())
    gen = torch.Generator().manual_seed(0)
    epoch1 = list(d.batches(100, gen))
    epoch2 = list(d.batches(100, gen))
    n = len(d.y_train)
    assert [len(y) for _, y in epoch1] == [100] * (n // 100) + [n % 100]
    assert torch.equal(torch.sort(torch.cat([y for _, y in epoch1])).values, torch.sort(d.y_train).values)
    assert not torch.equal(epoch1[0][1], epoch2[0][1])
    assert all(len(y) == 100 for _, y in d.batches(100, gen, drop_last=True))


def test_digits_config_validation():
    with pytest.raises(ConfigError, match="test_fraction"):
        DigitsDataConfig(test_fraction=1.5)
