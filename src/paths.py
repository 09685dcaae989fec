"""Where the project lives: the one place that knows, so defaults under it (data/, mlruns/, checkpoints/) agree."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
