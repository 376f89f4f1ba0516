"""The command service: the HTTP write API. Validates, appends events, nudges the workers."""
