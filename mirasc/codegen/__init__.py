"""Code generation: printers from SymPy to torch and Triton code, the render contexts each
template reads, and the Jinja rendering of a generated package."""
