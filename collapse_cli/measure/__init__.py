"""Statistics every family shares (stats.py): arrays in, numbers out, tested against hand-computed values."""
