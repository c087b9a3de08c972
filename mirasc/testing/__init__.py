"""Holding generated code to the math: the float64 autograd reference (`reference`, which shares
no code with the symbolic path), test cases and error metrics (`cases`), and the property check
behind `mirasc check` (`spec_check`)."""

from .cases import (
    Case,
    call,
    compare,
    continuation_error,
    decoding_error,
    gate_ranges,
    make_case,
    relative_error,
    rounding_sensitivity,
    run,
    run_errors,
    slice_case,
    spec_of,
    weight_shapes,
)

__all__ = [
    "Case",
    "call",
    "compare",
    "continuation_error",
    "decoding_error",
    "gate_ranges",
    "make_case",
    "relative_error",
    "rounding_sensitivity",
    "run",
    "run_errors",
    "slice_case",
    "spec_of",
    "weight_shapes",
]
