"""Command modules of `ofa-bench`; each defines `register(app)`."""
