"""upgrader_haproxy: a first-party upgrader plugin (placeholder)."""
