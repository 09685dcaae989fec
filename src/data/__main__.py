"""python -m src.data {download,check}: fill the data directory, or check it against each dataset's sha256."""

import sys

from .datasets import _cli

sys.exit(_cli())
