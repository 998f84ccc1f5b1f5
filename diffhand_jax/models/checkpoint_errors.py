"""The two errors of reading saved weights, defined once below everything that raises or catches them: the
encoders' importers (vit.py), the pretrained weights (pretrained.py) and a run's checkpoints
(runs/checkpoints.py, which re-exports `CheckpointMismatchError`)."""

from __future__ import annotations

from typing import Sequence


class CheckpointError(ValueError):
  """A checkpoint file is missing, unreadable, or does not fit the requested model."""


class CheckpointMismatchError(ValueError):
  """Saved arrays do not fit the model asked for (a state dict for another ViT, a run's checkpoint of
  another model): the message lists every missing, unused and mis-shaped one. Not damage: the file reads.
  """


def raise_if_mismatched(
    header: str, missing: Sequence[str], unused: Sequence[str], mismatched: Sequence[str]
) -> None:
  """CheckpointMismatchError listing every missing, unused and mis-shaped array under `header` (which
  says what the arrays were read for), when there is any."""
  if not (missing or unused or mismatched):
    return
  lines = [header]
  if missing:
    lines.append(f'  missing keys ({len(missing)}): {", ".join(missing)}')
  if unused:
    lines.append(f'  unused keys ({len(unused)}): {", ".join(unused)}')
  if mismatched:
    lines.append(f'  shape mismatches ({len(mismatched)}): ' + '; '.join(mismatched))
  raise CheckpointMismatchError('\n'.join(lines))
