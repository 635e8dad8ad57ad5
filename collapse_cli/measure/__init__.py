"""Pure metric functions: arrays in, numbers out, tested against hand-computed values."""
