"""Tasks generated on the fly from a seed, no downloads: synthetic long-context tasks and
character-level language modelling on a small public-domain corpus shipped in the package.

Every generator returns `(inputs, targets)`, both `[B, L]` int64, with targets -100 wherever
nothing is asked (the convention of `torch.nn.functional.cross_entropy`). the papers' recipes give the
recipes: MQAR (Zoology), RULER's `niah_single_1` with its repeated haystack, MAD's selective copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

IGNORE = -100


def _sample_without_replacement(n: int, k: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """[batch, k] distinct integers from [0, n) per row."""
    return torch.rand(batch, n, generator=g).argsort(dim=-1)[:, :k]


def mqar(
    batch: int,
    seq_len: int,
    num_pairs: int,
    vocab: int = 8192,
    power_a: float = 0.01,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall, Zoology's recipe: the context lists `num_pairs`
    key-value pairs (keys from [1, V/2), values from [V/2, V)); each key is asked again at a
    gap drawn with P(g) ~ (g + 1)^(power_a - 1); the answer is predicted at the query."""
    if seq_len % 2 or num_pairs * 4 > seq_len or not 1 <= num_pairs < vocab // 2:
        raise ValueError("mqar needs an even seq_len >= 4 * num_pairs, and vocab > 2 * num_pairs")
    g = generator or torch.Generator().manual_seed(0)
    half = vocab // 2
    keys = 1 + _sample_without_replacement(half - 1, num_pairs, batch, g)
    values = half + _sample_without_replacement(vocab - half, num_pairs, batch, g)
    context = torch.stack([keys, values], dim=-1).reshape(batch, 2 * num_pairs)
    space = (seq_len - 2 * num_pairs) // 2
    weights = (torch.arange(space, dtype=torch.float64) + 1) ** (power_a - 1)
    gaps = torch.multinomial(
        weights.expand(batch, space), num_pairs, replacement=False, generator=g
    )
    queries = torch.zeros(batch, seq_len - 2 * num_pairs + 1, dtype=torch.long)
    queries.scatter_(1, 2 * gaps, keys)
    inputs = torch.cat([context, queries], dim=1)[:, :-1]
    labels = torch.full((batch, seq_len + 1), IGNORE, dtype=torch.long)
    labels.scatter_(1, 2 * gaps + 2 * num_pairs + 1, values)
    return inputs, labels[:, 1:]


def selective_copy(
    batch: int,
    seq_len: int,
    num_tokens: int = 16,
    vocab: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAD's selective copying: `num_tokens` symbols from [0, V-2) scattered in order among
    blanks (V-2); then the copy marker (V-1) and blanks, at which the symbols are asked in order."""
    region = seq_len - num_tokens
    if region < num_tokens or vocab < 3:
        raise ValueError("selective_copy needs seq_len >= 2 * num_tokens and vocab >= 3")
    g = generator or torch.Generator().manual_seed(0)
    blank, copy = vocab - 2, vocab - 1
    symbols = torch.randint(0, vocab - 2, (batch, num_tokens), generator=g)
    slots = _sample_without_replacement(region, num_tokens, batch, g).sort(dim=-1).values
    inputs = torch.full((batch, seq_len), blank, dtype=torch.long)
    inputs.scatter_(1, slots, symbols)
    inputs[:, region] = copy
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    targets[:, region:] = symbols
    return inputs, targets


def _words(text: str) -> list[str]:
    return text.replace(".", " .").replace(":", " :").replace("?", " ?").split()


HAYSTACK = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = (
    "What is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is"
)
ADJECTIVES = [
    "able",
    "bold",
    "calm",
    "dark",
    "eager",
    "fair",
    "glad",
    "huge",
    "icy",
    "jolly",
    "keen",
    "loud",
    "mild",
    "neat",
    "odd",
    "pale",
    "quick",
    "rare",
    "shy",
    "tall",
    "ugly",
    "vast",
    "warm",
    "young",
    "zany",
    "brave",
    "cold",
    "deep",
    "fast",
    "gold",
]
NOUNS = [
    "apple",
    "bird",
    "cloud",
    "desk",
    "engine",
    "forest",
    "garden",
    "harbor",
    "island",
    "jacket",
    "kettle",
    "lantern",
    "meadow",
    "needle",
    "orbit",
    "pencil",
    "quarry",
    "river",
    "saddle",
    "tunnel",
    "valley",
    "window",
    "yard",
    "zebra",
    "anchor",
    "basket",
    "candle",
    "dragon",
    "ember",
    "falcon",
    "glacier",
    "hammer",
]
TEMPLATE_WORDS = sorted(set(_words(" ".join([HAYSTACK, NEEDLE, QUESTION]))) - {"{key}", "{value}"})
NIAH_VOCAB = ("<pad>", *TEMPLATE_WORDS, "-", *ADJECTIVES, *NOUNS, *(str(d) for d in range(10)))
VALUE_DIGITS = 7


def niah_encode(text: str) -> list[int]:
    index = {w: i for i, w in enumerate(NIAH_VOCAB)}
    return [index[w] for w in _words(text)]


def niah_decode(ids) -> str:
    return " ".join(NIAH_VOCAB[int(i)] for i in ids)


def niah(
    batch: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RULER's `niah_single_1`: one needle "One of the special magic numbers for <adj>-<noun>
    is: <7 digits>." at a uniformly random sentence of a repeated haystack, then the question;
    the 7 digits are asked. Word-level tokens (`NIAH_VOCAB`), left-padded to `seq_len`."""
    g = generator or torch.Generator().manual_seed(0)
    sentences = [s.strip() + "." for s in HAYSTACK.split(".") if s.strip()]
    fixed = len(_words(NEEDLE.format(key="a - b", value=" ".join("0" * VALUE_DIGITS))))
    fixed += len(_words(QUESTION.format(key="a - b"))) + VALUE_DIGITS
    hay = [_words(s) for s in sentences]
    budget = seq_len + 1 - fixed
    inputs, targets = [], []
    for _ in range(batch):
        adj = ADJECTIVES[int(torch.randint(len(ADJECTIVES), (1,), generator=g))]
        noun = NOUNS[int(torch.randint(len(NOUNS), (1,), generator=g))]
        key = f"{adj} - {noun}"
        digits = [str(int(d)) for d in torch.randint(0, 10, (VALUE_DIGITS,), generator=g)]
        filler, used = [], 0
        while used + len(hay[len(filler) % len(hay)]) <= budget:  # grow the haystack to fit
            used += len(hay[len(filler) % len(hay)])
            filler.append(hay[(len(filler)) % len(hay)])
        depth = int(torch.randint(len(filler) + 1, (1,), generator=g))
        needle = _words(NEEDLE.format(key=key, value=" ".join(digits)))
        words = (
            [w for s in filler[:depth] for w in s] + needle + [w for s in filler[depth:] for w in s]
        )
        words += _words(QUESTION.format(key=key)) + digits
        ids = niah_encode(" ".join(words))
        ids = [0] * (seq_len + 1 - len(ids)) + ids
        if len(ids) != seq_len + 1:
            raise ValueError(f"niah needs seq_len >= {fixed}, got {seq_len}")
        x = torch.tensor(ids)
        y = torch.full((seq_len,), IGNORE, dtype=torch.long)
        y[-VALUE_DIGITS:] = x[-VALUE_DIGITS:]
        inputs.append(x[:-1])
        targets.append(y)
    return torch.stack(inputs), torch.stack(targets)


CORPUS = Path(__file__).parent / "corpus" / "kjv_genesis_exodus.txt"
HELD_OUT = 0.1  # the corpus's last 10% is never trained on


@lru_cache(maxsize=1)
def corpus() -> tuple[str, str]:
    """(the shipped corpus, its alphabet): see mirasc/corpus/README.md."""
    text = CORPUS.read_text(encoding="utf-8")
    return text, "".join(sorted(set(text)))


def text_encode(text: str) -> list[int]:
    alphabet = corpus()[1]
    return [alphabet.index(c) for c in text if c in alphabet]


def text_decode(ids) -> str:
    alphabet = corpus()[1]
    return "".join(alphabet[int(i)] for i in ids)


def text(
    batch: int, seq_len: int, held_out: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Character-level language modelling: random windows of the corpus (its first 90%, or the
    held-out last 10%); the target at every position is the next character."""
    g = generator or torch.Generator().manual_seed(0)
    ids = _corpus_ids()
    split = int(len(ids) * (1 - HELD_OUT))
    part = ids[split:] if held_out else ids[:split]
    if seq_len + 1 > len(part):
        raise ValueError(f"text windows of {seq_len} do not fit the corpus")
    starts = torch.randint(0, len(part) - seq_len, (batch,), generator=g)
    windows = torch.stack([part[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


@lru_cache(maxsize=1)
def _corpus_ids() -> torch.Tensor:
    return torch.tensor(text_encode(corpus()[0]), dtype=torch.long)


@dataclass(frozen=True)
class Task:
    """A task as the trainer sees it: a vocabulary size and seeded batch generators, one for
    training and one for evaluation (the same one where the data is synthetic)."""

    name: str
    vocab: int
    make: Callable  # (batch, generator) -> (inputs, targets)
    held_out: Callable | None = None  # the same, for evaluation, where it must differ

    def batch(self, size: int, generator: torch.Generator):
        return self.make(size, generator)

    def eval_batch(self, size: int, generator: torch.Generator):
        return (self.held_out or self.make)(size, generator)


def task(name: str, seq_len: int, pairs: int | None = None, vocab: int | None = None) -> Task:
    """The named task at a sequence length, with the papers' small-scale defaults (`pairs` and
    `vocab` override MQAR's)."""
    if name == "mqar":  # a small vocabulary for CPU budgets (Zoology's default is 8192)
        pairs = pairs or max(1, seq_len // 8)
        vocab = vocab or max(256, 2 * seq_len + 2)
        mqar(1, seq_len, pairs, vocab)  # fail now, with mqar's message, on impossible sizes
        return Task(name, vocab, lambda b, g: mqar(b, seq_len, pairs, vocab, generator=g))
    if name == "copy":
        return Task(name, 16, lambda b, g: selective_copy(b, seq_len, min(16, seq_len // 4), 16, g))
    if name == "niah":
        return Task(name, len(NIAH_VOCAB), lambda b, g: niah(b, seq_len, g))
    if name == "text":
        return Task(
            name,
            len(corpus()[1]),
            lambda b, g: text(b, seq_len, False, g),
            lambda b, g: text(b, seq_len, True, g),
        )
    raise ValueError(f"unknown task {name!r}: one of {', '.join(TASKS)}")


TASKS = ("mqar", "niah", "copy", "text")
