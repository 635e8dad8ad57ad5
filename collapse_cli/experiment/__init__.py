"""The family-agnostic experiment: the generation loop, training-set composition, the run folder."""
