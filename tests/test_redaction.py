"""Placeholder: filled in by this round's mutation-testing work."""
