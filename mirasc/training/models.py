"""Small language models around any compiled memory layer.

`MemoryLM` is MIRAS' Llama-style stack: pre-RMSNorm blocks of [memory layer, SwiGLU MLP].
`hybrid="mal"` and `hybrid="mag"` are Titans' memory-as-a-layer and memory-as-a-gate blocks
(Titans, section 4), with learned persistent tokens prepended to the sequence and causal
sliding-window attention that always sees them; `hybrid="mac"` is memory-as-a-context, segment
by segment, following the paper's equations. Every model decodes from caches: the memory layers'
states, the sliding windows' keys and values, and MAC's current segment, so `generate()` never
re-reads what it has read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab: int
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    hybrid: str = "lm"  # lm | mac | mal | mag
    window: int = 64  # sliding-window attention span (MAL, MAG); segment length (MAC)
    persistent: int = 4  # persistent memory tokens (hybrids)
    mlp_ratio: float = 8 / 3

    def to_dict(self) -> dict:
        return asdict(self)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ratio: float):
        super().__init__()
        inner = int(hidden * ratio)
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoFormer) of [B, H, T, D] at `positions` [T]: q.k then
    depends only on the distance between positions."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / max(half, 1))
    angle = positions.to(torch.float32)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class KVCache(NamedTuple):
    """The keys and values (rotated) a sliding window still needs, their positions, and the
    position of the next token."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    next: int


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention with rotary positions over the last `window` tokens; the first
    `persistent` positions (the persistent memory) stay visible to every token (Titans Fig. 3b).
    With `use_cache` it also returns a `KVCache` holding only the keys later tokens can see."""

    def __init__(self, hidden: int, heads: int, window: int, persistent: int):
        super().__init__()
        self.heads, self.window, self.persistent = heads, window, persistent
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(
        self, x, allowed=None, positions=None, state: KVCache | None = None, use_cache=False
    ):
        """`allowed` [T, T] and `positions` [T] override the sliding-window mask (True: may
        attend) and the positions 0..T-1; `state` (a cache) continues a sequence. Returns the
        output, or (output, cache) with `use_cache`, like a memory layer."""
        B, T, C = x.shape
        start = 0 if state is None else state.next
        pos = torch.arange(start, start + T, device=x.device) if positions is None else positions
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, pos), rotary(k, pos)
        if state is not None:
            k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)
            pos_k = torch.cat([state.positions, pos])
        else:
            pos_k = pos
        if allowed is None:
            causal = pos[:, None] >= pos_k[None, :]
            near = (pos[:, None] - pos_k[None, :]) < self.window
            allowed = causal & (near | (pos_k[None, :] < self.persistent))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        o = self.out(o.transpose(1, 2).reshape(B, T, C))
        if not use_cache:
            return o
        keep = (pos_k > start + T - self.window) | (pos_k < self.persistent)
        return o, KVCache(k[:, :, keep], v[:, :, keep], pos_k[keep], start + T)


class AttentionLayer(nn.Module):
    """The softmax-attention baseline with a memory layer's interface: causal multi-head
    attention over the whole sequence (q/k/v and output projections, as wide as the memory)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attn = SlidingWindowAttention(hidden_size, num_heads, window=1 << 30, persistent=0)

    def forward(self, x, state: KVCache | None = None, use_cache: bool = False):
        """Like a memory layer: `state` is the key-value cache of the sequence so far."""
        return self.attn(x, state=state, use_cache=use_cache)


def mix(mixer: nn.Module, x: torch.Tensor, state, use_cache: bool):
    """A token mixer's output and its new state (None without `use_cache`)."""
    return mixer(x, state=state, use_cache=True) if use_cache else (mixer(x), None)


class Block(nn.Module):
    """One pre-norm block: token mixer(s), then a SwiGLU MLP, each with a residual."""

    def __init__(self, layer_cls, cfg: ModelConfig):
        super().__init__()
        self.hybrid = cfg.hybrid
        self.norm_mem = nn.RMSNorm(cfg.hidden)
        self.memory = layer_cls(cfg.hidden, cfg.heads)
        if cfg.hybrid in ("mal", "mag"):
            self.norm_attn = nn.RMSNorm(cfg.hidden)
            self.attn = SlidingWindowAttention(cfg.hidden, cfg.heads, cfg.window, cfg.persistent)
        if cfg.hybrid == "mag":  # o = norm(y) * sigmoid(norm(M(x))), learnable vector weights
            self.norm_y = nn.RMSNorm(cfg.hidden)
            self.norm_m = nn.RMSNorm(cfg.hidden)
        self.norm_mlp = nn.RMSNorm(cfg.hidden)
        self.mlp = SwiGLU(cfg.hidden, cfg.mlp_ratio)

    def forward(self, h, cache=None, use_cache: bool = False):
        """h [B, T, hidden]; `cache` continues a sequence: (memory layer state, attention cache).
        Returns (h, the new cache, or None without `use_cache`)."""
        memory_state, attn_state = cache if cache is not None else (None, None)
        m, memory_state = mix(self.memory, self.norm_mem(h), memory_state, use_cache)
        if self.hybrid == "mag":
            y, attn_state = mix(self.attn, self.norm_attn(h), attn_state, use_cache)
            h = h + self.norm_y(y) * torch.sigmoid(self.norm_m(m))
        else:
            h = h + m
            if self.hybrid == "mal":
                y, attn_state = mix(self.attn, self.norm_attn(h), attn_state, use_cache)
                h = h + y
        new_cache = (memory_state, attn_state) if use_cache else None
        return h + self.mlp(self.norm_mlp(h)), new_cache


class MACCache(NamedTuple):
    """Where a MAC block is: the memory's state at the start of the current segment (what
    retrieval reads), its state after the last token, and the segment's normalised inputs."""

    start: object
    state: object
    segment: torch.Tensor


class MACBlock(nn.Module):
    """Titans' memory as a context (Titans, eqs. 21-25), segment by segment:
    h = M*_{t-1}(q) is retrieved from the memory before the segment; attention runs over
    [persistent tokens | h | segment] (token i sees the persistent tokens, h_j and x_j for j <= i);
    the memory is then updated with the attention output y, and o = y * sigmoid(norm(M_t(y))),
    where M_t(y) is read after each token's write, so the block stays causal."""

    def __init__(self, layer_cls, cfg: ModelConfig):
        super().__init__()
        self.segment = cfg.window
        self.persistent = nn.Parameter(torch.randn(cfg.persistent, cfg.hidden) * 0.02)
        self.norm_in = nn.RMSNorm(cfg.hidden)
        self.memory = layer_cls(cfg.hidden, cfg.heads)
        self.attn = SlidingWindowAttention(cfg.hidden, cfg.heads, window=1 << 30, persistent=0)
        self.norm_m = nn.RMSNorm(cfg.hidden)
        self.norm_mlp = nn.RMSNorm(cfg.hidden)
        self.mlp = SwiGLU(cfg.hidden, cfg.mlp_ratio)

    def layout(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and rotary positions of [persistent | h_0..h_n-1 | x_0..x_n-1]. The positions
        (p + j for h_j, p + segment + j for x_j) do not depend on how much of the segment has
        been read, so decoding a segment token by token sees what the parallel pass sees."""
        p = self.persistent.shape[0]
        i = torch.arange(n, device=device)
        positions = torch.cat([torch.arange(p, device=device), p + i, p + self.segment + i])
        causal = i[:, None] >= i[None, :]
        rows = torch.zeros(p + 2 * n, p + 2 * n, dtype=torch.bool, device=device)
        rows[:, :p] = True  # everyone sees the persistent tokens
        rows[p : p + n, p : p + n] = causal  # retrieved tokens (outputs unused)
        rows[p + n :, p : p + n] = causal  # token i sees h_j, j <= i
        rows[p + n :, p + n :] = causal  # and x_j, j <= i
        rows[:p, :p] = True
        return rows, positions

    def forward(self, h, cache: MACCache | None = None, use_cache: bool = False):
        """h [B, T, hidden], continuing `cache` (the current segment so far) if given. A segment
        is re-read as it grows during decoding (at most `window` tokens); the memory is not."""
        B, T, _ = h.shape
        cache = cache or MACCache(None, None, h.new_zeros(B, 0, h.shape[-1]))
        outs, done = [], 0
        while done < T:
            n_new = min(T - done, self.segment - cache.segment.shape[1])
            x_new = self.norm_in(h[:, done : done + n_new])
            x = torch.cat([cache.segment, x_new], dim=1)  # the segment so far
            n = x.shape[1]
            start = cache.start.memory if cache.start is not None else None
            retrieved = self.memory.retrieve(x, start)
            context = torch.cat([self.persistent.expand(B, -1, -1), retrieved, x], dim=1)
            allowed, positions = self.layout(n, h.device)
            y = self.attn(context, allowed, positions)[:, -n_new:]
            m, state = self.memory(y, state=cache.state, use_cache=True)
            outs.append(y * torch.sigmoid(self.norm_m(m)))
            full = n == self.segment
            cache = MACCache(state if full else cache.start, state, x[:, :0] if full else x)
            done += n_new
        if outs:  # zero tokens pass through, as in every other block
            h = h + torch.cat(outs, dim=1)
        return h + self.mlp(self.norm_mlp(h)), cache if use_cache else None


class MemoryLM(nn.Module):
    """Embedding, blocks, final norm and an output head; `layer_cls` is a generated Layer."""

    def __init__(self, layer_cls, cfg: ModelConfig):
        super().__init__()
        if cfg.hybrid not in ("lm", "mac", "mal", "mag"):
            raise ValueError(f"hybrid must be lm, mac, mal or mag, got {cfg.hybrid!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.persistent = (  # Titans' persistent memory tokens, prepended to the sequence
            nn.Parameter(torch.randn(cfg.persistent, cfg.hidden) * 0.02)
            if cfg.hybrid in ("mal", "mag") and cfg.persistent
            else None
        )
        block = MACBlock if cfg.hybrid == "mac" else Block
        self.blocks = nn.ModuleList(block(layer_cls, cfg) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def forward(self, tokens: torch.Tensor, caches=None, use_cache: bool = False):
        """tokens [B, T] -> logits [B, T, vocab], or (logits, caches) with `use_cache`; passing
        the caches back continues the sequence, so decoding costs no re-reading."""
        h = self.embed(tokens)
        p = 0 if self.persistent is None or caches is not None else self.persistent.shape[0]
        if p:  # a sequence starts with the persistent tokens
            h = torch.cat([self.persistent.expand(h.shape[0], -1, -1), h], dim=1)
        caches = list(caches) if caches is not None else [None] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            h, caches[i] = block(h, caches[i], use_cache)
        logits = self.head(self.norm(h[:, p:]))
        return (logits, caches) if use_cache else logits

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0):
        """Greedy (temperature 0) or sampled continuation of `prompt` [B, T], token by token
        from the caches. The prompt holds at least one token: the models have no start token,
        so nothing defines the distribution of a first token."""
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(
                f"generate() needs a prompt [B, T] with T >= 1, got shape {tuple(prompt.shape)}"
            )
        logits, caches = self(prompt, use_cache=True)
        tokens = prompt
        for _ in range(max_new_tokens):
            last = logits[:, -1]
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1)
            else:
                nxt = last.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            logits, caches = self(nxt, caches, use_cache=True)
        return tokens
