"""upgrader_ssh: a first-party upgrader plugin (placeholder)."""
