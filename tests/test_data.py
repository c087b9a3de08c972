"""Synthetic tasks: the published recipes, checked on what a model must learn."""

from __future__ import annotations

import pytest
import torch

from mirasc.training import data


def test_mqar_answers_are_the_values_of_the_asked_keys():
    g = torch.Generator().manual_seed(1)
    x, y = data.mqar(16, 64, 8, vocab=256, generator=g)
    assert x.shape == y.shape == (16, 64)
    for row_x, row_y in zip(x, y, strict=True):
        pairs = dict(zip(row_x[:16:2].tolist(), row_x[1:16:2].tolist(), strict=True))
        asked = (row_y != data.IGNORE).nonzero().flatten()
        assert len(asked) == 8
        for pos in asked.tolist():
            assert pairs[row_x[pos].item()] == row_y[pos].item()  # predicted at the query
        assert all(1 <= k < 128 for k in pairs) and all(128 <= v < 256 for v in pairs.values())


def test_mqar_is_seeded():
    a = data.mqar(4, 32, 4, 64, generator=torch.Generator().manual_seed(3))
    b = data.mqar(4, 32, 4, 64, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.raises(ValueError):
        data.mqar(1, 30, 8, 64)


def test_selective_copy_asks_the_symbols_in_order():
    x, y = data.selective_copy(8, 40, 6, 10, torch.Generator().manual_seed(0))
    for row_x, row_y in zip(x, y, strict=True):
        symbols = row_x[:34][row_x[:34] < 8]
        assert len(symbols) == 6 and row_x[34] == 9
        assert torch.equal(row_y[34:], symbols) and (row_y[:34] == data.IGNORE).all()


def test_niah_asks_the_needles_value():
    x, y = data.niah(4, 128, torch.Generator().manual_seed(2))
    assert x.shape == (4, 128)
    for row_x, row_y in zip(x, y, strict=True):
        text = data.niah_decode(row_x)
        digits = [data.NIAH_VOCAB[int(t)] for t in row_y[-data.VALUE_DIGITS :]]
        needle = text.split(" is : ")[1].split(" . ")[0].split()
        assert needle == digits and "The grass is green" in text
        assert (row_y[: -data.VALUE_DIGITS] == data.IGNORE).all()


def test_text_windows_predict_the_next_character_from_disjoint_splits():
    text, alphabet = data.corpus()
    assert 300_000 < len(text) < 500_000 and len(alphabet) == 62
    assert data.text_decode(data.text_encode("In the beginning God")) == "In the beginning God"
    x, y = data.text(4, 64, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    ids = data.text_encode(text)
    split = int(len(ids) * (1 - data.HELD_OUT))
    held, _ = data.text(8, 64, held_out=True, generator=torch.Generator().manual_seed(1))
    train_text, held_text = data.text_decode(ids[:split]), data.text_decode(ids[split:])
    for row in held:  # a held-out window lies in the last 10% (which is Exodus)
        assert data.text_decode(row.tolist()) in held_text
    assert data.text_decode(x[0].tolist()) in train_text
    task = data.task("text", 64)
    assert task.vocab == 62 and not torch.equal(
        task.batch(2, torch.Generator().manual_seed(0))[0],
        task.eval_batch(2, torch.Generator().manual_seed(0))[0],
    )


def test_mqar_sizes_are_checked_up_front():
    with pytest.raises(ValueError, match="mqar needs"):
        data.task("mqar", 32, pairs=9, vocab=64)


@pytest.mark.parametrize("name", ["mqar", "copy", "niah", "text"])
def test_task_registry(name):
    t = data.task(name, 128)
    x, y = t.batch(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 128) and int(x.max()) < t.vocab and (y != data.IGNORE).any()
