"""Video clips from a dataset whose examples carry `clip_id` and `frame_index` (the synthetic
`sequences` config, docs/datasets.md): a split read whole, then cut into clips in frame order.

  clips = sequences.load_clips(config.dataset, 'test', config_name='sequences')
  clips[0]['image']  # (F, H, W, 3) uint8, frames 0 .. F − 1 of the first clip
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from diffhand_jax.data import splits

CLIP_FEATURES = ('clip_id', 'frame_index')


def group_clips(arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """A split's arrays (each (N, ...), with `clip_id` and `frame_index`) cut into clips: one dict of
  (F, ...) arrays per clip, in clip_id order, its rows sorted by frame_index.

  Raises ValueError when a clip skips or repeats a frame number (frames must run 0 .. F − 1).
  """
  missing = [key for key in CLIP_FEATURES if key not in arrays]
  if missing:
    raise ValueError(f'sequences: the examples lack {missing}; is this a clip dataset?')
  clip_ids = np.asarray(arrays['clip_id'])
  frame_index = np.asarray(arrays['frame_index'])
  clips = []
  for clip in np.unique(clip_ids):
    rows = np.nonzero(clip_ids == clip)[0]
    rows = rows[np.argsort(frame_index[rows], kind='stable')]
    if not np.array_equal(frame_index[rows], np.arange(len(rows))):
      raise ValueError(
          f'sequences: clip {int(clip)} has frames {frame_index[rows][:10].tolist()}..., '
          'not 0 .. F − 1'
      )
    clips.append({key: np.asarray(value)[rows] for key, value in arrays.items()})
  return clips


def load_clips(
    dataset_config: Mapping[str, Any],
    split: str,
    *,
    config_name: str | None = None,
    max_clips: int | None = None,
    features=splits.FEATURES,
) -> list[dict[str, np.ndarray]]:
  """The clips of ``split``: `splits.load_split` (building the synthetic data if missing) with
  ``features`` plus clip_id and frame_index, cut by `group_clips`. ``config_name`` replaces the
  dataset config's (e.g. 'sequences' for a run trained on the synthetic 'default' stills);
  ``max_clips`` keeps the first clips."""
  dataset_config = dict(dataset_config)
  if config_name is not None:
    dataset_config['config_name'] = config_name
  wanted = tuple(features) + tuple(k for k in CLIP_FEATURES if k not in features)
  clips = group_clips(splits.load_split(dataset_config, split, features=wanted))
  return clips[:max_clips] if max_clips else clips
