"""The names of the lab's shared files in its directory: a leaf, so the lab's app (which
runs once per host start) finds them without importing the layout (and ``upgrader.model``)."""

from __future__ import annotations

#: the lab's database (upgrader.lab.app writes to it when it exists)
LAB_DATABASE = "app.sqlite"
#: the lab's default flag store (a SQLite file in the lab dir)
LAB_FLAG_STORE = "flags.sqlite"
#: the flag store spec ``lab up --flag-store`` chose (mode 0600: a URL may hold a password);
#: the apps read it at start
LAB_FLAG_STORE_SPEC = "flags.store"
