"""Small language models around any compiled memory layer (design §8).

`MemoryLM` is MIRAS' Llama-style stack: pre-RMSNorm blocks of [memory layer, SwiGLU MLP].
`hybrid="mal"` and `hybrid="mag"` are Titans' memory-as-a-layer and memory-as-a-gate blocks
(papers.md §1.9), with learned persistent tokens prepended to the sequence and causal
sliding-window attention that always sees them; `hybrid="mac"` is memory-as-a-context, segment
by segment, following the paper's equations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoFormer) of [B, H, T, D] at positions 0..T-1: q.k then
    depends on the distance between positions, so re-reading a longer prefix changes nothing."""
    T, half = x.shape[-2], x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / max(half, 1))
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class SlidingWindowAttention(nn.Module):
    """Causal softmax attention with rotary positions over the last `window` tokens; the first
    `persistent` positions (the persistent memory) stay visible to every token (Titans Fig. 3b)."""

    def __init__(self, hidden: int, heads: int, window: int, persistent: int):
        super().__init__()
        self.heads, self.window, self.persistent = heads, window, persistent
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, allowed: torch.Tensor | None = None):
        """`allowed` [T, T] overrides the sliding-window mask (True: may attend)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        if allowed is None:
            i = torch.arange(T, device=x.device)
            causal = i[:, None] >= i[None, :]
            near = (i[:, None] - i[None, :]) < self.window
            allowed = causal & (near | (i[None, :] < self.persistent))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(o.transpose(1, 2).reshape(B, T, C))


class AttentionLayer(nn.Module):
    """The softmax-attention baseline with a memory layer's interface: causal multi-head
    attention over the whole sequence (q/k/v and output projections, as wide as the memory)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attn = SlidingWindowAttention(hidden_size, num_heads, window=1 << 30, persistent=0)

    def forward(self, x, state=None, use_cache: bool = False):
        if use_cache:  # re-reads the whole prefix: state is the sequence so far
            x_all = x if state is None else torch.cat([state, x], dim=1)
            return self.attn(x_all)[:, -x.shape[1] :], x_all
        return self.attn(x)


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
        """h [B, T, hidden]; `cache` (plain blocks only) is the memory layer's decoding state.
        Returns (h, new cache or None)."""
        if self.hybrid == "mag":
            x = self.norm_mem(h)
            y = self.attn(self.norm_attn(h))
            h = h + self.norm_y(y) * torch.sigmoid(self.norm_m(self.memory(x)))
        else:
            if use_cache:
                m, cache = self.memory(self.norm_mem(h), state=cache, use_cache=True)
            else:
                m = self.memory(self.norm_mem(h))
            h = h + m
            if self.hybrid == "mal":
                h = h + self.attn(self.norm_attn(h))
        return h + self.mlp(self.norm_mlp(h)), cache


class MACBlock(nn.Module):
    """Titans' memory as a context (papers.md §1.9, eqs. 21-25), segment by segment:
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

    def mask(self, n: int, device) -> torch.Tensor:
        p = self.persistent.shape[0]
        i = torch.arange(n, device=device)
        causal = i[:, None] >= i[None, :]
        rows = torch.zeros(p + 2 * n, p + 2 * n, dtype=torch.bool, device=device)
        rows[:, :p] = True  # everyone sees the persistent tokens
        rows[p : p + n, p : p + n] = causal  # retrieved tokens (outputs unused)
        rows[p + n :, p : p + n] = causal  # token i sees h_j, j <= i
        rows[p + n :, p + n :] = causal  # and x_j, j <= i
        rows[:p, :p] = True
        return rows

    def forward(self, h, cache=None, use_cache: bool = False):
        B, T, _ = h.shape
        state, outs = None, []
        for start in range(0, T, self.segment):
            x = self.norm_in(h[:, start : start + self.segment])
            n = x.shape[1]
            memory = state.memory if state is not None else None
            retrieved = self.memory.retrieve(x, memory)
            context = torch.cat([self.persistent.expand(B, -1, -1), retrieved, x], dim=1)
            y = self.attn(context, self.mask(n, h.device))[:, -n:]
            m, state = self.memory(y, state=state, use_cache=True)
            outs.append(y * torch.sigmoid(self.norm_m(m)))
        h = h + torch.cat(outs, dim=1)
        return h + self.mlp(self.norm_mlp(h)), None


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
        """tokens [B, T] -> logits [B, T, vocab], or (logits, caches) with use_cache (plain
        stack only: the memory layers' decoding states, so generation costs O(1) per token)."""
        if use_cache and self.cfg.hybrid != "lm":
            raise ValueError("use_cache is supported by the plain stack (hybrid='lm') only")
        h = self.embed(tokens)
        p = 0 if self.persistent is None else self.persistent.shape[0]
        if p:
            h = torch.cat([self.persistent.expand(h.shape[0], -1, -1), h], dim=1)
        caches = list(caches) if caches is not None else [None] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            h, caches[i] = block(h, caches[i], use_cache)
        logits = self.head(self.norm(h[:, p:]))
        return (logits, caches) if use_cache else logits

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0):
        """Greedy (temperature 0) or sampled continuation of `prompt` [B, T]: the plain stack
        decodes token by token from its caches; hybrids re-read the whole sequence."""
        cached = self.cfg.hybrid == "lm"
        logits, caches = self(prompt, use_cache=True) if cached else (self(prompt), None)
        tokens = prompt
        for _ in range(max_new_tokens):
            last = logits[:, -1]
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1)
            else:
                nxt = last.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            if cached:
                logits, caches = self(nxt, caches, use_cache=True)
            else:
                logits = self(tokens)
        return tokens
