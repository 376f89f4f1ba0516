"""Code both sides share: settings, events, the event store, logging, the live relay."""
