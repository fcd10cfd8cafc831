"""Example flows shipped with pgflow (used by `pgflow demo` and the tests)."""
