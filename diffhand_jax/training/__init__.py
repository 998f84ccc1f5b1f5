"""The training layer: the loop, the update step, losses, sharding, evaluation and logging."""
