"""Where the project lives: the one place that knows, so defaults under it (data/, mlruns/, checkpoints/) agree."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The file that commits a checkpoint folder (src/training/resume.py): a folder without it holds no finished epoch.
CHECKPOINT_STATE = "state.json"
