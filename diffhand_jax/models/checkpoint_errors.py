"""The two errors of reading saved weights, defined once below everything that raises or catches them: the
encoders' importers (vit.py), the pretrained weights (pretrained.py) and a run's checkpoints
(runs/checkpoints.py, which re-exports `CheckpointMismatchError`)."""

from __future__ import annotations


class CheckpointError(ValueError):
  """A checkpoint file is missing, unreadable, or does not fit the requested model."""


class CheckpointMismatchError(ValueError):
  """Saved arrays do not fit the model asked for (a state dict for another ViT, a run's checkpoint of
  another model): the message lists every missing, unused and mis-shaped one. Not damage: the file reads.
  """
