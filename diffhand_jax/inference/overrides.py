"""What an inference command may change in a trained run's config, and applying it.

`predict`, `submission` and the hypotheses benchmark open a run from WORKDIR/config.json. Their
`--config.key=value` flags (absl, `ml_collections.config_flags`) override:

  * model.sampling_steps, model.num_hypotheses, model.eta: they pick the sampler, not the network, whose
    shape is fixed by the checkpoint;
  * every field of config.dataset and config.eval that the configs share (`runs.presets.base_config`):
    where the data lives (dataset.data_dir, dataset.name, dataset.eval_split, ...), eval.batch_size, ...

`override_fields()` is that set as a ConfigDict of placeholders (None = not overridden), the flag's
value; `apply_overrides(config, flag_value)` copies the run's config with the set ones applied.
"""

from __future__ import annotations

from typing import Any, Iterator

import ml_collections
from ml_collections import config_dict

from diffhand_jax.runs import presets

# Model fields an inference command may change: they pick the sampler, not the network.
SAMPLER_FIELDS = {'sampling_steps': int, 'num_hypotheses': int, 'eta': float}
# Whole sections of the run's config that an inference command may change.
SECTIONS = ('dataset', 'eval')

HELP = (
    "overrides of the run's config: --config.model.sampling_steps / num_hypotheses / eta (the network "
    'itself is fixed by the checkpoint), --config.dataset.* and --config.eval.*'
)


def override_fields() -> ml_collections.ConfigDict:
  """The overridable fields, each a placeholder of its type with value None."""
  shared = presets.base_config(dataset_name='', eval_split='')
  fields = ml_collections.ConfigDict()
  fields.model = ml_collections.ConfigDict(
      {name: config_dict.placeholder(kind) for name, kind in SAMPLER_FIELDS.items()}
  )
  for section in SECTIONS:
    fields[section] = ml_collections.ConfigDict(
        {name: config_dict.placeholder(shared[section].get_type(name)) for name in shared[section]}
    )
  return fields


def _set_leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  for name, value in node.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _set_leaves(value, prefix + (name,))
    elif value is not None:
      yield prefix + (name,), value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict | dict | None
) -> ml_collections.ConfigDict:
  """A copy of `config` with every field of `overrides` that is not None set (nested keys as in the
  config: {'model': {'sampling_steps': 4}}). Keys outside `override_fields()` raise ValueError."""
  config = ml_collections.ConfigDict(config.to_dict())
  if overrides is None:
    return config
  allowed = override_fields()
  for path, value in _set_leaves(overrides):
    key = '.'.join(path)
    node = allowed
    for part in path:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f'config.{key} cannot be overridden at inference: {HELP}')
      node = node[part]
    target = config
    for part in path[:-1]:
      if part not in target:
        target[part] = ml_collections.ConfigDict()
      target = target[part]
    if isinstance(value, list):
      value = tuple(value)
    if (
        path[-1] in target
        and target[path[-1]] is not None
        and type(target[path[-1]]) is not type(value)
    ):
      # JSON keeps tuples as lists, and ConfigDict refuses a value of another type than the field's.
      del target[path[-1]]
    target[path[-1]] = value
  return config
