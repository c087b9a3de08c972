"""The intermediate representation every stage reads: the expression tree (`expr`) and the
checked spec (`spec`). Plain data with no dependencies, so the runtime and the reference can read
a spec without the compiler."""
