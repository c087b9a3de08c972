"""`mirasc explain`: the normalised spec, the derivation, the update rule, the plan and the emitted code."""

from __future__ import annotations


def add_parser(sub, epilog: str) -> None:
    parser = sub.add_parser(
        "explain",
        help="show the derived update rule and the code it emits",
        description="Print the normalised spec, the SymPy derivation and the emitted code.",
        epilog=epilog,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--all", action="store_true", help="print every generated file")
    parser.add_argument("--ascii", dest="unicode", action="store_false", help="ASCII-only formulas")
    parser.set_defaults(run=run)


def _pretty(expr, use_unicode: bool) -> str:
    """SymPy's two-dimensional form of `expr`, or its one-line form where the pretty printer
    fails (it raised on a piecewise whose conditions hold piecewise values, fuzz-found)."""
    import sympy as sp

    try:
        return sp.pretty(expr, use_unicode=use_unicode)
    except (TypeError, ValueError):
        return sp.sstr(expr)


def run(args) -> int:
    import sympy as sp

    from ..compiler.pipeline import build
    from ..frontend.source import read_spec

    result = build(*read_spec(args.spec))
    spec, d, plan, files = result.spec, result.derived, result.plan, result.files
    b = d.bias
    print("# spec (normalised)\n")
    print(spec.text())
    print("# attentional bias  l(y, v) = g(_S0, ...), _Si = sum_j phi_i(y_j, v_j)\n")
    print(_pretty(sp.Eq(sp.Symbol("l"), b.g, evaluate=False), use_unicode=args.unicode))
    for i, p in enumerate(b.phi):
        print(_pretty(sp.Eq(sp.Symbol(f"phi{i}"), p, evaluate=False), use_unicode=args.unicode))
    print("\n# derived: dl/dy_j (element-wise)\n")
    print(_pretty(b.grad(), use_unicode=args.unicode))
    if d.activation is not None:
        a = d.activation
        print(f"\n# activation {a.name}: sigma(x), sigma'(x), sigma''(x)\n")
        for e in (a.f, a.df, a.d2f):
            print(_pretty(e, use_unicode=args.unicode))
    print("\n# update rule (docs/semantics.md §2)\n")
    print(update_rule(spec))
    print("\n# plan\n")
    print(f"torch backend: {', '.join(plan.strategies)} (default {plan.strategies[0]})")
    tiles = (
        " and tile of value columns (each column of this memory updates on its own)"
        if plan.recurrent_value_tiles
        else ""
    )
    print(
        f"triton backend: fused recurrent forward and backward kernels, one program per "
        f"(batch, head){tiles}; state saved every {plan.segment} tokens, the backward pass recomputes "
        f"each segment: activation memory (ceil(T / {plan.segment}) + {plan.segment + 1}) x |state| "
        "per (batch, head)"
    )
    chunked = {
        "wy": "calls of at least 64 tokens run on the chunked WY / UT kernels (tensor-core "
        "matmuls per chunk of 64, the state saved per chunk)",
        "dual": f"calls of at least 64 tokens starting on a chunk boundary run on the chunked "
        f"dual-form kernels (tensor-core matmuls per chunk of {spec.chunk}, the state saved per "
        "chunk)",
        "mlp": f"calls of at least 64 tokens starting on a chunk boundary run on the chunked "
        f"dual-form kernels (tensor-core matmuls per chunk of {spec.chunk}, the state in global "
        "memory a tile of hidden units at a time, saved per chunk; a sequential pass over the "
        "chunks for the state and its adjoint, the reads and their reverse for every chunk at "
        "once); so do calls without autograd (decoding) of any length",
        "deep": f"calls of at least 64 tokens starting on a chunk boundary run on the chunked "
        f"dual-form kernels of deep MLPs (per chunk of {spec.chunk}, every product a tensor-core "
        "gemm over tiles of scratch buffers in global memory, the state saved per chunk); so do "
        "calls without autograd (decoding) of any length",
        "deep kl": f"calls of at least 64 tokens starting on a chunk boundary run on the chunked "
        f"kl kernels of deep MLPs (per chunk of {spec.chunk}, the surprise and its reverse "
        "tensor-core gemms over tiles of scratch buffers in global memory, each token's state a "
        "row softmax a tile of each layer's state at a time, the state saved per chunk); so do "
        "calls without autograd (decoding) of any length",
        "kl": f"calls of at least 64 tokens starting on a chunk boundary run on the chunked kl "
        f"kernels (per chunk of {spec.chunk}, the surprise and each token's logits as tensor-core "
        "matmuls, each token's state a row softmax (an MLP's a tile of hidden units at a time), "
        "the state saved per chunk; in training an MLP's outputs for every chunk at once)",
    }
    kind = plan.triton_chunked
    kind = "deep kl" if kind == "deep" and spec.retention.kind == "kl" else kind
    chunked = chunked.get(kind, f"no chunked kernels ({plan.triton_chunked_why})")
    print(f"triton backend, training-length calls: {chunked}")
    print("\n# emitted element-wise code (elementwise.py)\n")
    print(files["elementwise.py"])
    if args.all:
        for fname, text in files.items():
            if fname != "elementwise.py":
                print(f"# ---- {fname}\n{text}")
    return 0


def update_rule(spec) -> str:
    """The update rule of `spec` in words and symbols, as docs/semantics.md §2 states it."""
    from ..ir.spec import operand_text

    ret, alg = spec.retention, spec.algorithm
    lr = operand_text(alg.lr)
    rate = operand_text(ret.gate) if ret.gate is not None else ""
    at = f"(1 - {rate}_t) W°" if ret.first else "W°"
    g = f"g_t = grad_W l(f(W; k_t), v_t) at W = {at}, W° = state at the end of the previous chunk (chunk = {spec.chunk})"
    if spec.clip is not None:
        g += f", soft-clamped to norm {spec.clip}"
    if alg.kind == "momentum":
        keep = f"(1 - {rate}_t) " if ret.kind == "decay" else ""
        rule = (
            f"S_t = {operand_text(alg.momentum)}_t S_(t-1) - {lr}_t g_t;  W_t = {keep}W_(t-1) + S_t"
        )
    elif ret.kind == "none":
        rule = f"W_t = W_(t-1) - {lr}_t g_t"
    elif ret.kind == "decay":
        rule = f"W_t = (1 - {rate}_t) W_(t-1) - {lr}_t g_t"
    elif ret.kind == "l2":
        rule = f"W_t = (W_(t-1) - {lr}_t g_t) / (1 + {lr}_t {rate}_t)"
    elif ret.kind == "lq":
        rule = (
            f"A_t = {rate}_t A_(t-1) - {lr}_t g_t;  W_t = A_t / ||A||_{ret.q:g}^{ret.q - 2:g}"
            " (norm of A_t at chunk ends, of the chunk's anchor inside a chunk)"
        )
    else:
        rule = (
            f"W_t = softmax_row({rate}_t log W_(t-1) - {lr}_t g_t)"
            " (the mirror step, on every token; rows of each matrix on the simplex)"
        )
    return f"{g}\n{rule}\no_t = f(W_t; scale * q_t)  (read after write)"
