"""The gateway: one origin for the whole API."""
