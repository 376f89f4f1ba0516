"""Dramatiq workers: the projector, the assistant and (later) the analytics publisher."""
