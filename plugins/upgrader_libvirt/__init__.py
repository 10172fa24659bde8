"""upgrader_libvirt: a first-party upgrader plugin (placeholder)."""
