"""Model architectures, one module per paper setup (see each module's docstring)."""
