"""upgrader_webhook: a first-party upgrader plugin (placeholder)."""
