"""Suite-wide test setup."""

# Import Hypothesis while the stack is shallow: its pytest plugin otherwise
# imports it lazily from deep inside the terminal summary, where CPython
# 3.11.7's AST validator can fail with "recursion depth mismatch".
import hypothesis  # noqa: F401
