"""agents/runtimes."""
