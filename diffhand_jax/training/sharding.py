"""The device mesh and how the train state and the batches are laid out on it (data and FSDP axes).

config.sharding_rules maps regexes over a tensor's path in the train state to a PartitionSpec (see
`rule_spec`); `state_shardings` applies them to a whole state.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffhand_jax.runs import state as state_lib

PyTree = Any


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """A device mesh from {'data': -1, 'fsdp': 1}-style axis sizes; one -1 is filled in."""
  devices = list(jax.devices() if devices is None else devices)
  names = list(mesh_config.keys())
  sizes = [int(mesh_config[n]) for n in names]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh may fill in one axis (-1), got {dict(mesh_config)}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {dict(mesh_config)} does not divide {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f'config.mesh {dict(mesh_config)} needs {int(np.prod(sizes))} devices, '
        f'{len(devices)} are present'
    )
  return Mesh(np.asarray(devices).reshape(sizes), names)


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """FSDP rule: shard the largest dimension divisible by the fsdp axis of tensors with at least
  ``min_size`` elements; replicate the rest."""
  if fsdp_size <= 1 or int(np.prod(shape)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


# The default of config.sharding_rules: every tensor goes by the FSDP rule above.
DEFAULT_SHARDING_RULES = (('.*', 'fsdp_largest'),)


_NAMED_SPECS = ('fsdp_largest', 'replicate')


def check_sharding_rules(rules) -> list[tuple[re.Pattern, Any]]:
  """config.sharding_rules → [(compiled regex, spec)], or a ValueError saying which rule is wrong."""
  compiled = []
  for index, rule in enumerate(rules):
    where = f'config.sharding_rules[{index}] = {rule!r}'
    if isinstance(rule, (str, bytes)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(
          f'{where}: a rule is a pair (regex over the param path, spec), e.g. '
          f"('encoder/.*/kernel', 'fsdp_largest')"
      )
    pattern, spec = rule
    try:
      regex = re.compile(pattern)
    except re.error as error:
      raise ValueError(f'{where}: {pattern!r} is not a valid regex ({error})') from None
    if isinstance(spec, str):
      if spec not in _NAMED_SPECS:
        raise ValueError(
            f'{where}: spec must be one of {_NAMED_SPECS} or a tuple of mesh axis names / '
            f'None per dimension, got {spec!r}'
        )
    elif spec is None:
      spec = 'replicate'
    elif isinstance(spec, (tuple, list)):
      spec = tuple(tuple(axis) if isinstance(axis, list) else axis for axis in spec)
    else:
      raise ValueError(f'{where}: spec must be a string or a tuple, got {type(spec).__name__}')
    compiled.append((regex, spec))
  return compiled


def _explicit_spec(
    spec: tuple, path: str, shape: tuple[int, ...], mesh_shape: Mapping[str, int], pattern: str
) -> P:
  where = f'config.sharding_rules: rule {pattern!r} gives {spec!r} to {path} of shape {shape}'
  if len(spec) != len(shape):
    raise ValueError(
        f'{where}, but the spec needs one entry (axis name, tuple of names or None) per '
        f'dimension: {len(spec)} != {len(shape)}'
    )
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    unknown = [name for name in names if name not in mesh_shape]
    if unknown:
      raise ValueError(
          f'{where}, but the mesh has no axis {unknown[0]!r} (axes: {list(mesh_shape)})'
      )
    size = int(np.prod([mesh_shape[name] for name in names]))
    if shape[dim] % size:
      raise ValueError(
          f'{where}, but dimension {dim} ({shape[dim]}) does not divide over {axes!r} '
          f'({size} devices)'
      )
  return P(*spec)


def rule_spec(
    path: str, shape: tuple[int, ...], rules, mesh_shape: Mapping[str, int], min_size: int
) -> P:
  """The PartitionSpec of the tensor at ``path``: the spec of the first rule whose regex matches
  (re.search) the path; replicated when none matches.

  rules: config.sharding_rules, pairs (regex, spec) with spec 'fsdp_largest' (`param_spec`, with
  ``min_size``), 'replicate', or a tuple with one mesh axis name, tuple of names, or None per dimension.
  """
  return _first_match(path, shape, check_sharding_rules(rules), mesh_shape, min_size)


def _first_match(path, shape, compiled_rules, mesh_shape, min_size) -> P:
  for regex, spec in compiled_rules:
    if not regex.search(path):
      continue
    if spec == 'replicate':
      return P()
    if spec == 'fsdp_largest':
      return param_spec(tuple(shape), int(mesh_shape.get('fsdp', 1)), min_size)
    return _explicit_spec(spec, path, tuple(shape), mesh_shape, regex.pattern)
  return P()


def state_shardings(
    mesh: Mesh, abstract_state: PyTree, min_size: int, rules=DEFAULT_SHARDING_RULES
) -> PyTree:
  """A NamedSharding per leaf of ``abstract_state`` by the sharding rules (see `rule_spec`); the paths
  the rules see are those of the state: 'params/...', 'opt_state/...', 'ema_params/...', 'step', 'rng'.
  """
  compiled_rules = check_sharding_rules(rules)
  mesh_shape = dict(mesh.shape)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh,
          _first_match(
              state_lib.leaf_path(path), tuple(leaf.shape), compiled_rules, mesh_shape, min_size
          ),
      ),
      abstract_state,
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over every mesh axis (data, then fsdp)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows of the global batch → global jax.Arrays."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def sharded_abstract_state(
    config, model, optimizer, mesh: Mesh
) -> tuple[state_lib.TrainState, PyTree]:
  """(the train state as jax.ShapeDtypeStructs carrying their shardings, the NamedShardings), by
  config.sharding_rules (default: DEFAULT_SHARDING_RULES) and config.fsdp_min_size."""
  abstract_state = state_lib.abstract_state(config, model, optimizer)
  shardings = state_shardings(
      mesh,
      abstract_state,
      config.get('fsdp_min_size', 2**18),
      config.get('sharding_rules', DEFAULT_SHARDING_RULES),
  )
  abstract_state = jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract_state,
      shardings,
  )
  return abstract_state, shardings
