"""The front end: spec text to a checked `Spec` (`source` reads the file, `parser` builds the
syntax tree, `names` resolves and inlines, `checker` checks the memory). Imports no torch and no
sympy."""
