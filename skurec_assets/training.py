"""Training assets (prototypes, superclasses, coarse and fine heads, flat baselines, evaluation) — being written."""
