"""What generated code imports besides torch and triton: the op contract's input checks and
dispatch, the layer machinery, and the Triton host side.

It never imports the compiler (sympy, lark, jinja2): a trained model needs only this package.
"""

from ..errors import BackendError
from .chunk_math import DualForm
from .chunked import dual_form
from .inputs import (
    BACKENDS,
    anchor_weights,
    check_qkv,
    chunks,
    compute_dtype,
    gate,
    initial_weights,
    loop_inputs,
    pick_backend,
    products,
    reference,
    warn_fallback,
)
from .layer import MemoryCache, MemoryLayer, ShortConvolution, l2norm
from .simplex import mirror_read
from .triton_host import FusedRecurrent, custom_op, triton_interpreted

__all__ = [
    "BACKENDS",
    "BackendError",
    "DualForm",
    "FusedRecurrent",
    "MemoryCache",
    "MemoryLayer",
    "ShortConvolution",
    "anchor_weights",
    "check_qkv",
    "chunks",
    "compute_dtype",
    "custom_op",
    "dual_form",
    "gate",
    "initial_weights",
    "l2norm",
    "loop_inputs",
    "mirror_read",
    "pick_backend",
    "products",
    "reference",
    "triton_interpreted",
    "warn_fallback",
]
