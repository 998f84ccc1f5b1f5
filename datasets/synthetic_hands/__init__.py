"""synthetic_hands dataset: the procedural hand rendered with random pose, shape, view, look and background.

`Builder`, `build` and `SyntheticHandsConfig` need TensorFlow Datasets; `generate_example`, `SceneConfig` and
`load_hand_kit` do not. Both groups are imported on first use, so `scene` stays importable without TFDS.
"""

_BUILDER_NAMES = ('Builder', 'build', 'SyntheticHandsConfig', 'BUILDER_CONFIGS')
_SCENE_NAMES = ('generate_example', 'SceneConfig', 'load_hand_kit', 'scene_config')


def __getattr__(name):
  if name in _BUILDER_NAMES:
    from . import synthetic_hands_dataset_builder  # pylint: disable=g-import-not-at-top
    return getattr(synthetic_hands_dataset_builder, name)
  if name in _SCENE_NAMES:
    from . import scene  # pylint: disable=g-import-not-at-top
    return getattr(scene, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
