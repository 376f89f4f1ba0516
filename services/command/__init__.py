"""The command service: the HTTP write API. Validates, appends events, wakes the workers."""
