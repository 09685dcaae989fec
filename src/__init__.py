"""Hydra + MLflow experiment tracking for the lab's Keras models."""
