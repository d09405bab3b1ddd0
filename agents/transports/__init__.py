"""agents/transports."""
