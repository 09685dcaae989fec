"""python -m src.outbox import FILE...: the command a run prints when its store missed records (kept where logs
already show it); the outbox itself is src/tracking/outbox.py."""

import sys

from .tracking.outbox import _cli

if __name__ == "__main__":
    sys.exit(_cli())
