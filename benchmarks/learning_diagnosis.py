"""Why a memory does or does not learn recall: measurements of a one-layer MQAR model at its
start (the recall table's model: width 64, 2 heads, one batch of 32, vocabulary 64, 8 pairs).

Per spec it prints
- the gradient norm that one batch's loss sends to the q, k and v projections, each gate's
  projection and the memory's learned initial weights (0 where nothing reaches them);
- for a bias with a `delta` gate (YAAD's Huber switch): the median residual ||M(k) - v|| at the
  starting memory, the median delta, and the share of tokens in the l2 branch (residual <= delta);
- the Frobenius norm of the weights the memory reads with at the start (for lq retention,
  MONETA's W = A / ||A||_q^(q-2), the normalised matrices);
- the memorize ratio: recall error ||M(k_t) - v_t||^2 over the batch's own tokens after one pass,
  as a fraction of the error at the starting memory;
- the memory state's norm (sum over its matrices) at a quarter, a half and the end of the
  sequence, at the starting gates and with the learning-rate and momentum gates at their
  formulas' maxima (the worst the outer model can learn): an inner loop that grows without
  bound shows there;
- with `--steps`: the read weights' Frobenius norm per matrix, and the effective step size, the
  relative change ||W_after - W_before|| / ||W_before|| of each read matrix over the first chunk
  (its 16 tokens' writes), at the starting gates, the median per-token gradient norm of
  each matrix at the starting memory (the size of the step before the learning rate), and
  which way the first chunk's writes move each read matrix's norm, the step taken on W itself
  against the step taken on the state and read back (they differ only under lq: MONETA's
  normaliser reverses the direction for q > 3).

`--standard-start` (lq retention, q != 3) starts each A at c R, with c = N(R)^(1/(3-q)), so that
the read weights W = A / N(A) begin at R, the l2 models' starting weights, instead of R / N(R):
whether the starting scale of W is what sets MONETA's steps.

`--checkpoint DIR/checkpoint.pt` (a `mirasc train` run of the same spec and budget) measures the
trained model instead of a fresh one: what the memory looks like once the outer model has learned.

    python benchmarks/learning_diagnosis.py [specs ...] [--seq-len 128] [--seed 0] [--steps]
        [--standard-start] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def standard_start(spec, layer) -> None:
    """Rescale lq's learned initial A so that the read weights start at the stored matrices."""
    q = spec.retention.q
    if spec.retention.kind != "lq" or q == 3:
        raise SystemExit(f"--standard-start needs lq retention with q != 3 ({spec.name})")
    with torch.no_grad():
        for a in layer.initial:
            norm = a.abs().pow(q).sum((-2, -1), keepdim=True).pow((q - 2) / q)
            a.mul_(norm.pow(1 / (3 - q)))


def build(path: str, seq_len: int, seed: int, checkpoint: str | None = None):
    """The compiled module, the model (trained weights from `checkpoint` if given), its memory
    layer and one training batch (x, y)."""
    import mirasc
    from mirasc.training import data
    from mirasc.training.models import MemoryLM, ModelConfig

    torch.manual_seed(seed)
    task = data.task("mqar", seq_len, pairs=8, vocab=64)
    module = mirasc.compile(path)
    model = MemoryLM(module.Layer, ModelConfig(vocab=task.vocab, hidden=64, layers=1, heads=2))
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    x, y = task.batch(32, torch.Generator().manual_seed(seed * 1000))
    return module, model, model.blocks[0].memory, x, y


def record_inputs(layer) -> dict:
    """Wrap the layer's op call so that the projected q, k, v, gates and initial state are kept."""
    seen = {}
    raw = layer.memory

    def memory(q, k, v, gates, initial_state, *args, **kwargs):
        seen.update(q=q.detach(), k=k.detach(), v=v.detach(), initial=initial_state)
        seen["gates"] = {g: t.detach() for g, t in gates.items()}
        return raw(q, k, v, gates, initial_state, *args, **kwargs)

    layer.memory = memory
    return seen


def gradient_norms(model, layer, x, y) -> dict:
    """Norm of the gradient one batch's loss sends to each projection of the memory layer."""
    from mirasc.training.trainer import masked_metrics

    loss, _ = masked_metrics(model(x), y)
    loss.backward()
    norms = {n: getattr(layer, f"{n}_proj").weight.grad.norm().item() for n in ("q", "k", "v")}
    for name, proj in layer.gate_proj.items():
        norms[name] = proj.weight.grad.norm().item()
    if layer.initial_kind != "zeros":
        norms["initial"] = sum(w.grad.norm().item() ** 2 for w in layer.initial) ** 0.5
    return norms


def read_weights(spec, state: tuple) -> tuple:
    """The matrices the memory reads with: W itself, kl's centred out * W - 1, or lq's
    A / ||A||_q^(q-2)."""
    weights = state[: len(spec.weight_names)]
    if spec.retention.centred:
        return tuple(w.shape[-1] * w - 1.0 for w in weights)
    if spec.retention.kind != "lq":
        return weights
    q = spec.retention.q
    return tuple(a / a.abs().pow(q).sum((-2, -1), keepdim=True).pow((q - 2) / q) for a in weights)


def state_norm(state: tuple, count: int) -> float:
    """Mean over the batch and heads of the summed Frobenius norms of the first `count` matrices."""
    return sum(w.flatten(-2).norm(dim=-1).mean().item() for w in state[:count])


def huber_branch(module, layer, seen) -> str:
    """Median residual at the starting memory, median delta, and the share in the l2 branch."""
    if "delta" not in seen["gates"]:
        return "-"
    with torch.no_grad():
        y = module.read(seen["k"], seen["initial"], **layer.norm_args())
    residual = (y - seen["v"]).norm(dim=-1)  # [B, T, H]
    delta = seen["gates"]["delta"]
    share = (residual <= delta).float().mean().item()
    med = statistics.median(residual.flatten().tolist())
    return f"{med:.2f} / {statistics.median(delta.flatten().tolist()):.2f} ({share:.0%} l2)"


def read_norms(spec, state: tuple) -> list:
    """Frobenius norm of each read matrix, averaged over the batch and heads."""
    return [w.flatten(-2).norm(dim=-1).mean().item() for w in read_weights(spec, state)]


def without_retention(spec, gates: dict) -> dict:
    """`gates` with the retention gate, if any, at its no-op: keep 1 (lq, kl) or forget 0."""
    from mirasc.ir.spec import GateRef

    ret = spec.retention
    if isinstance(ret.gate, GateRef):
        kept = ret.kind in ("lq", "kl")
        gates[ret.gate.name] = torch.full_like(gates[ret.gate.name], float(kept))
    return gates


def first_chunk(module, spec, layer, seen, gates: dict) -> tuple:
    """The starting memory and the memory after the first chunk's writes under `gates`."""
    C = spec.chunk
    start = layer.starting_memory(seen["k"].shape[0], seen["k"])
    piece = {g: t[:, :C] for g, t in gates.items()}
    q, k, v = (seen[n][:, :C] for n in ("q", "k", "v"))
    with torch.no_grad():
        _, final = module.op(
            q, k, v, **piece, initial_state=start, output_final_state=True,
            scale=layer.scale, **layer.norm_args(),
        )  # fmt: skip
    return start, final


def relative_steps(module, spec, layer, seen) -> list:
    """Per read matrix, ||W_after - W_before|| / ||W_before|| over the first chunk's writes
    (mean over the batch and heads): how far one chunk moves the memory, whatever its scale."""
    start, final = first_chunk(module, spec, layer, seen, seen["gates"])
    steps = []
    for before, after in zip(read_weights(spec, start), read_weights(spec, final), strict=True):
        change = (after - before).flatten(-2).norm(dim=-1) / before.flatten(-2).norm(dim=-1)
        steps.append(change.mean().item())
    return steps


def radial_steps(module, spec, layer, seen) -> list:
    """Per read matrix, ||W'|| / ||W|| after the first chunk's writes with the retention gate
    kept at 1, two ways: the step applied to W itself (plain gradient descent) and the step
    applied to the state A, read back as W (lq: A / ||A||_q^(q-2)); mean over the batch and
    heads. For q > 3 the normaliser has negative degree in A (W scales as 1 / c when A scales by
    c), so a step that grows the state shrinks what the memory reads with: the two disagree."""
    gates = without_retention(spec, dict(seen["gates"]))
    start, final = first_chunk(module, spec, layer, seen, gates)
    read_before, read_after = read_weights(spec, start), read_weights(spec, final)
    ratios = []
    for w, a0, a1, w1 in zip(read_before, start, final, read_after, strict=False):
        norm = w.flatten(-2).norm(dim=-1)
        plain = (w + (a1 - a0)).flatten(-2).norm(dim=-1) / norm  # the same step taken in W
        ratios.append((plain.mean().item(), (w1.flatten(-2).norm(dim=-1) / norm).mean().item()))
    return ratios


def token_gradients(module, spec, layer, seen, tokens: int = 16) -> list:
    """Median over tokens, batch and heads of each state matrix's gradient norm, ||g_t||, for
    each of the first `tokens` tokens written alone at the starting memory (what `clip` bounds).
    Read off one write with the learning rate at 1 and no retention: g = state_0 - state_1."""
    from mirasc.ir.spec import GateRef

    gates = dict(seen["gates"])
    lr = spec.algorithm.lr
    if spec.algorithm.kind != "gd" or not isinstance(lr, GateRef):
        return []
    gates[lr.name] = torch.ones_like(gates[lr.name])
    gates = without_retention(spec, gates)
    start = layer.starting_memory(seen["k"].shape[0], seen["k"])
    norms = [[] for _ in spec.weight_names]
    with torch.no_grad():
        for t in range(tokens):
            one = {g: x[:, t : t + 1] for g, x in gates.items()}
            q, k, v = (seen[n][:, t : t + 1] for n in ("q", "k", "v"))
            _, after = module.op(
                q, k, v, **one, initial_state=start, output_final_state=True,
                scale=layer.scale, **layer.norm_args(),
            )  # fmt: skip
            for i, (w0, w1) in enumerate(zip(start, after, strict=False)):
                norms[i].append((w0 - w1).flatten(-2).norm(dim=-1).flatten())
    return [torch.cat(n).median().item() for n in norms]


def memorize_ratio(module, layer, seen) -> float:
    """Recall error on the batch's own (k, v) after one pass, over the error at the start."""
    norm = layer.norm_args()
    k, v, start = seen["k"], seen["v"], layer.starting_memory(seen["k"].shape[0], seen["k"])
    with torch.no_grad():
        _, final = module.op(
            k, k, v, **seen["gates"], initial_state=start, output_final_state=True, **norm
        )
        before = (module.read(k, start, **norm) - v).pow(2).sum(-1).mean()
        after = (module.read(k, final, **norm) - v).pow(2).sum(-1).mean()
    return (after / before).item()


def state_growth(module, spec, layer, seen, gates: dict) -> list:
    """The state's norm at a quarter, a half and the end of the sequence, chunk-aligned."""
    T = seen["k"].shape[1]
    marks = [max(spec.chunk, (T // 4) // spec.chunk * spec.chunk), T // 2, T]
    state, start, norms = seen["initial"], 0, []
    count = len(spec.weight_names)
    with torch.no_grad():
        for stop in marks:
            piece = {g: t[:, start:stop] for g, t in gates.items()}
            q, k, v = (seen[n][:, start:stop] for n in ("q", "k", "v"))
            _, state = module.op(
                q, k, v, **piece, initial_state=state, output_final_state=True,
                scale=layer.scale, **layer.norm_args(),
            )  # fmt: skip
            norms.append(state_norm(state, count))
            start = stop
    return norms


def at_maximum(spec, layer, gates: dict) -> dict:
    """The gates with the learning rate and the momentum at their formulas' largest value."""
    from mirasc.ir.spec import GateRef

    top = dict(gates)
    for op in (spec.algorithm.lr, spec.algorithm.momentum):
        if isinstance(op, GateRef):
            value = type(layer).gate_formulas[op.name](torch.tensor(12.0)).item()
            top[op.name] = torch.full_like(gates[op.name], value)
    return top


def diagnose(path: str, seq_len: int, seed: int, args) -> str:
    """One table row for the spec at `path` (with `args.steps`, three more columns)."""
    from mirasc.frontend.checker import load

    spec = load(Path(path).read_bytes(), path)
    module, model, layer, x, y = build(path, seq_len, seed, args.checkpoint)
    if args.standard_start:
        standard_start(spec, layer)
    seen = record_inputs(layer)
    grads = gradient_norms(model, layer, x, y)
    start = layer.starting_memory(x.shape[0], seen["k"])
    scale = state_norm(read_weights(spec, start), len(spec.weight_names))
    growth = state_growth(module, spec, layer, seen, seen["gates"])
    top = state_growth(module, spec, layer, seen, at_maximum(spec, layer, seen["gates"]))
    shown = ", ".join(f"{n} {g:.3g}" for n, g in grads.items())
    gates = ", ".join(f"{g} {t.mean().item():.3g}" for g, t in seen["gates"].items())
    row = (
        f"| {Path(path).stem} | {shown} | {gates} | {huber_branch(module, layer, seen)} "
        f"| {scale:.3g} | {memorize_ratio(module, layer, seen):.3f} "
        f"| {' → '.join(f'{n:.3g}' for n in growth)} | {' → '.join(f'{n:.3g}' for n in top)} |"
    )
    if args.steps:
        norms = read_norms(spec, start)
        moved = relative_steps(module, spec, layer, seen)
        grads = token_gradients(module, spec, layer, seen)
        radial = radial_steps(module, spec, layer, seen)
        row += (
            f" {', '.join(f'{n:.3g}' for n in norms)} | {', '.join(f'{m:.3g}' for m in moved)} "
            f"| {', '.join(f'{g:.3g}' for g in grads) or '-'} "
            f"| {', '.join(f'{p:.3f} / {r:.3f}' for p, r in radial)} |"
        )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("specs", nargs="*", default=sorted(map(str, (ROOT / "specs").glob("*.miras"))))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", action="store_true", help="add per-matrix norms and chunk steps")
    p.add_argument("--checkpoint", help="a trained model of the same spec (mirasc train's)")
    p.add_argument("--standard-start", action="store_true", help="lq: W starts at R, not R/N(R)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    header = (
        "| spec | gradient norms at the start | starting gates (mean) | residual / delta "
        "| read weights' norm | memorize | state norm at L/4 → L/2 → L, starting gates "
        "| same, lr and momentum gates at their maxima |"
    )
    if args.steps:
        header += (
            " read weights' norm per matrix | relative change over the first chunk "
            "| per-token gradient norm per matrix (median) "
            "| ||W'|| / ||W|| per matrix after the first chunk, step on W / on A read as W |"
        )
    print(header)
    print("| --- " * header.count(" |") + "|")
    for path in args.specs:
        print(diagnose(path, args.seq_len, args.seed, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
