"""Data ablations: named variants of the data stage, each trained and scored the same way, and
their comparison against the base variant with the seed-to-seed spread."""
