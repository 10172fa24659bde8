"""``python -m upgrader.balancer``: run the built-in load balancer (see docs/BALANCER.md)."""

from __future__ import annotations

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
