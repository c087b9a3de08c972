"""The derivation: a Spec's loss, activation and gates as SymPy expressions with the derivatives
every backend needs (`symbolic`), and the execution plan decided from them (`plan`)."""
