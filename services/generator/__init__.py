"""Chunk generation service: per-session state, the scheduler, and the model engines."""
