"""The one place where a run is checked before it spends compute.

`check_run(config, workdir, mode=...)` validates every config field the run uses (type, range, choices,
cross-field rules) and the prerequisites of the mode (the hand model files, the prepared dataset, the
workdir, the device mesh), and raises `RunCheckError` listing every problem at once. The commands
(`main`, `ablation`, `bench`, `predict`, `submission`) print its message and exit with status 2: these are
the user's mistakes or missing downloads, not bugs, so they get no traceback.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections

from diffhand_jax.data import depth, mixture, splits
from diffhand_jax.geometry import hand_model, hypotheses
from diffhand_jax.models import diffhand, pretrained
from diffhand_jax.runs import checkpoints, init_from, presets, run_config

MODES = ('train', 'evaluate', 'memory')
HAND_MODELS = ('procedural', 'mano')
MESH_AXES = ('data', 'fsdp')
# Timestep distributions of the training objective (training/losses.py `sample_timesteps`).
TIMESTEP_SAMPLINGS = ('uniform', 'power')
# Per-point errors of the vertex and joint terms (training/losses.py `point_distance`).
POINT_DISTANCES = ('squared', 'euclidean')


class RunCheckError(Exception):
  """Problems found before a run starts: ``problems`` holds one line each."""

  def __init__(self, problems: Sequence[str], what: str = 'the run'):
    self.problems = list(problems)
    self.what = what
    super().__init__(str(self))

  def __str__(self) -> str:
    if len(self.problems) == 1:
      return f'{self.what} cannot start: {self.problems[0]}'
    lines = '\n'.join(f'  - {problem}' for problem in self.problems)
    return f'{self.what} cannot start ({len(self.problems)} problems):\n{lines}'


# --------------------------------------------------------------------------------------------------
# Field rules
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
  """Collects problems about fields of one config, each naming the field as --config.<key> spells it."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []

  def get(self, key: str, default: Any = None) -> Any:
    node = self.config
    for part in key.split('.'):
      if node is None or not hasattr(node, 'get') or part not in node:
        return default
      node = node[part]
    return node

  def add(self, key: str, message: str) -> None:
    value = self.get(key)
    self.problems.append(f'config.{key} = {value!r}: {message}')

  def require(self, key: str, test: Callable[[Any], bool], message: str, *, optional=False) -> bool:
    value = self.get(key)
    if optional and value is None:
      return True
    if value is None or not test(value):
      self.add(key, message)
      return False
    return True

  def integer(
      self, key: str, minimum: int, *, optional: bool = False, maximum: int | None = None
  ) -> bool:
    bound = f'an integer >= {minimum}' + (f' and <= {maximum}' if maximum is not None else '')
    return self.require(
        key,
        lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum),
        f'must be {bound}',
        optional=optional,
    )

  def number(
      self,
      key: str,
      *,
      low: float | None = None,
      high: float | None = None,
      low_open: bool = False,
      high_open: bool = False,
      optional: bool = False,
  ) -> bool:
    def test(v):
      if not _is_number(v):
        return False
      if low is not None and (v <= low if low_open else v < low):
        return False
      return not (high is not None and (v >= high if high_open else v > high))

    lo = '' if low is None else ('(' if low_open else '[') + f'{low}, '
    hi = '' if high is None else f'{high}' + (')' if high_open else ']')
    where = f' in {lo or "(-inf, "}{hi or "inf)"}' if low is not None or high is not None else ''
    return self.require(key, test, f'must be a finite number{where}', optional=optional)

  def choice(self, key: str, choices: Iterable[str]) -> bool:
    choices = tuple(choices)
    return self.require(key, lambda v: v in choices, f'must be one of {list(choices)}')


def validate_config(config: ml_collections.ConfigDict, *, mode: str | None = None) -> list[str]:
  """Every problem with the fields a run of ``config`` uses; [] when it is sound."""
  check = _Checker(config)
  mode = mode or check.get('mode', 'train')
  if 'mode' in config:
    check.choice('mode', MODES)
  check.integer('seed', 0)
  batch_ok = check.integer('batch_size', 1)
  check.integer('num_train_steps', 0)
  check.integer('log_every_steps', 1)
  check.integer('eval_every_steps', 1)
  check.integer('checkpoint_every_steps', 1)
  check.integer('keep_checkpoints', 1)
  accum_ok = check.integer('grad_accum_steps', 1)
  if batch_ok and accum_ok and config.batch_size % config.grad_accum_steps:
    check.add('grad_accum_steps', f'must divide config.batch_size ({config.batch_size})')
  check.number('ema_decay', low=0.0, high=1.0, high_open=True)
  check.integer('fsdp_min_size', 0)
  mesh = check.get('mesh')
  if not hasattr(mesh, 'items') or not mesh:
    check.add('mesh', "must be a dict of axis sizes such as {'data': -1, 'fsdp': 1}")
  else:
    for axis, size in mesh.items():
      if axis not in MESH_AXES:
        check.add('mesh', f'unknown axis {axis!r} (axes: {list(MESH_AXES)})')
      elif not (_is_int(size) and (size >= 1 or size == -1)):
        check.add('mesh', f'axis {axis!r} must have a size >= 1, or -1 to fill in, got {size!r}')
    if sum(1 for size in mesh.values() if size == -1) > 1:
      check.add('mesh', 'at most one axis may be -1 (filled in with the remaining devices)')

  # Data
  check.choice('dataset.name', sorted(splits.BUILDER_MODULES))
  check.choice('dataset.hand_model', HAND_MODELS)
  check.require(
      'dataset.tip_ids',
      lambda v: len(v) == 5 and all(_is_int(t) and t >= 0 for t in v),
      'must be 5 vertex ids (thumb, index, middle, ring, little), or None for the model ' "file's",
      optional=True,
  )
  check.number('dataset.crop_margin', low=0.0, optional=True)
  check.require(
      'dataset.scale_range',
      lambda v: len(v) == 2 and all(_is_number(x) for x in v) and 0 < v[0] <= v[1],
      'must be (low, high) with 0 < low <= high',
  )
  check.number('dataset.max_rotation_deg', low=0.0, high=180.0, optional=True)
  check.number('dataset.max_translation', low=0.0)
  check.number('dataset.colour_jitter', low=0.0)
  check.integer('dataset.max_train_examples', 1, optional=True)
  check.integer('dataset.prefetch_batches', 1, optional=True)
  check.integer('dataset.num_threads', 1, optional=True)
  check.integer('dataset.num_workers', 0, optional=True)
  if check.get('dataset.name') in splits.BUILDER_MODULES:  # the entries default to it
    for key, entries in (
        ('dataset.mixture', lambda: mixture.mixture_entries(config.dataset)),
        ('eval.datasets', lambda: mixture.eval_entries(config.dataset, config.eval)),
    ):
      try:
        entries()
      except (ValueError, TypeError, KeyError) as error:
        check.add(key, str(error).split(': ', 1)[-1])
    try:
      several = len(mixture.mixture_entries(config.dataset)) > 1
    except (ValueError, TypeError, KeyError):
      several = False  # reported above
    if several and presets.depth_source(config) is not None:
      check.add('dataset.mixture', mixture.DEPTH_MIXTURE_PROBLEM.split(': ', 1)[-1])

  # Model: the sampler fields here; the network's own fields are checked by building it (below).
  timesteps_ok = check.integer('model.num_timesteps', 1)
  check.integer(
      'model.sampling_steps', 1, maximum=config.model.num_timesteps if timesteps_ok else None
  )
  check.integer('model.num_hypotheses', 1)
  check.number('model.eta', low=0.0)
  check.number('model.vertex_scale', low=0.0, low_open=True)
  check.integer('model.img_size', 8)
  width_ok = check.integer('model.width', 1)
  if (
      check.integer('model.num_heads', 1)
      and width_ok
      and config.model.width % config.model.num_heads
  ):
    check.add(
        'model.width', f'must be a multiple of config.model.num_heads ({config.model.num_heads})'
    )
  problem = model_problem(config)
  if problem:
    check.problems.append(problem)

  # Objective and optimiser
  check.number('loss.lambda_joint', low=0.0)
  check.number('loss.lambda_smooth', low=0.0)
  check.choice('loss.timestep_sampling', TIMESTEP_SAMPLINGS)
  if check.get('loss.point_distance') is not None:  # absent from configs saved before it existed
    check.choice('loss.point_distance', POINT_DISTANCES)
  check.number('loss.timestep_power', low=0.0, low_open=True)
  check.number('loss.timestep_top_fraction', low=0.0, high=1.0, optional=True)
  check.number('loss.lambda_orientation', low=0.0, optional=True)
  if check.get('loss.lambda_orientation', 0.0) and not check.get('model.orientation_head', False):
    check.add(
        'loss.lambda_orientation',
        'needs config.model.orientation_head=True (the head whose prediction the term scores)',
    )
  check.number('optimizer.learning_rate', low=0.0, low_open=True)
  check.integer('optimizer.warmup_steps', 0)
  check.number('optimizer.end_lr_factor', low=0.0)
  check.number('optimizer.weight_decay', low=0.0)
  check.number('optimizer.clip_norm', low=0.0, low_open=True)
  check.number('optimizer.b1', low=0.0, high=1.0, high_open=True)
  check.number('optimizer.b2', low=0.0, high=1.0, high_open=True)

  # Depth (configs saved before #33 have none)
  if check.get('depth') is not None:
    check.choice('depth.source', presets.DEPTH_SOURCES)
    check.choice('depth.train', presets.DEPTH_TRAIN)
    check.integer('depth.estimator_size', 32)
    check.integer('depth.batch_size', 1)
    check.integer('depth.shard_size', 1)

  # Evaluation
  check.integer('eval.batch_size', 1)
  check.integer('eval.num_export', 0)
  check.choice('eval.aggregate', hypotheses.METHODS)
  check.integer('eval.max_examples', 1, optional=True)
  if mode == 'train':
    if check.get('batch_norm') is not None:  # configs saved before #32 have none
      check.choice('batch_norm.statistics', presets.BATCH_NORM_STATISTICS)
      check.require('batch_norm.freeze', lambda v: isinstance(v, bool), 'must be true or false')
    check.problems += pretrained.config_problems(config)
  return check.problems


def model_problem(config: ml_collections.ConfigDict) -> str | None:
  """Builds the network of ``config`` (no params, no compilation); its error, or None."""
  try:
    diffhand.build_model(config.model)
  except (ValueError, TypeError, KeyError, AttributeError) as error:
    return f'config.model does not describe a network: {error}'
  return None


# --------------------------------------------------------------------------------------------------
# Prerequisites: files, data, devices
# --------------------------------------------------------------------------------------------------


def workdir_problem(workdir: str | None, mode: str) -> str | None:
  """Why ``workdir`` cannot hold a run (None for mode 'memory', which writes nothing)."""
  if mode == 'memory':
    return None
  if not workdir:
    return f'--workdir is required in mode {mode!r}'
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    return f'--workdir={workdir} is a file, not a folder'
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f'--workdir={workdir}: {existing} is a file, so the folder cannot be made'
  if not os.access(existing, os.W_OK | os.X_OK):
    return f'--workdir={workdir}: {existing} is not writable'
  return None


def has_checkpoint(workdir: str | None) -> bool:
  folder = os.path.join(workdir or '', 'checkpoints')
  return (
      bool(workdir) and os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))
  )


def mesh_problems(config: ml_collections.ConfigDict, device_count: int) -> list[str]:
  """Whether config.mesh fits ``device_count`` devices and the global batch divides over it."""
  mesh = dict(config.mesh)
  known = math.prod(size for size in mesh.values() if size != -1)
  if -1 in mesh.values():
    if device_count % known:
      return [f'config.mesh = {mesh} does not divide the {device_count} devices present']
    size = device_count
  else:
    size = known
    if size != device_count:
      return [f'config.mesh = {mesh} needs {size} devices, {device_count} are present']
  micro = config.batch_size // config.grad_accum_steps
  if micro % size:
    return [
        f'config.batch_size = {config.batch_size} does not split over the mesh: each of the '
        f'{config.grad_accum_steps} micro-batch(es) of {micro} rows must divide over {size} devices'
    ]
  return []


def depth_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The estimated depth maps a depth run of config.depth.source='estimator' reads and lacks."""
  problems = []
  for split in (config.dataset.train_split, config.dataset.eval_split):
    try:
      depth.StoredDepth(depth.stored_directory(config.dataset, split, prepare=False))
    except (FileNotFoundError, ValueError) as error:
      problems.append(f'{error} (split {split!r})')
  return problems


def prerequisite_problems(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    *,
    mode: str,
    device_count: int | None = None,
) -> list[str]:
  """What the run needs and lacks: the workdir, the MANO files, the prepared dataset, the pretrained
  encoder (a fresh training run only), and devices for the mesh. ``device_count`` None: JAX's."""
  problems = []
  problem = workdir_problem(workdir, mode)
  if problem:
    problems.append(problem)
  if mode == 'evaluate' and not problem and not has_checkpoint(workdir):
    problems.append(
        f'mode evaluate: no checkpoint in {os.path.join(workdir, "checkpoints")} to evaluate'
    )
  if config.dataset.hand_model == 'mano' and mode != 'memory':
    _, problem = hand_model.mano_dir_problem(
        config.dataset.get('mano_dir'),
        f'config.dataset.hand_model = "mano" ({config.dataset.name})',
        ('MANO_RIGHT.pkl',),
    )
    if problem:
      problems.append(problem + ', or try without it: --config.dataset.hand_model=procedural')
  if mode in ('train', 'evaluate'):
    data = [problem.rstrip() for problem in data_problems(config)]
    problems += data
    if not data and presets.depth_source(config) == 'estimator':
      problems += depth_problems(config)
  source = config.get('init_from')
  if mode == 'train' and source:  # a resume reads its own checkpoint, never the source run again
    same = bool(workdir) and os.path.realpath(source) == os.path.realpath(workdir)
    problem = init_from.init_from_problem(config, workdir)
    if problem and (same or not has_checkpoint(workdir)):
      problems.append(problem)
  if mode == 'train' and not has_checkpoint(workdir):  # a resume reads the checkpoint's weights
    problems += pretrained.source_problems(config)
  if device_count is None:
    device_count = jax.device_count()
  problems += mesh_problems(config, device_count)
  return problems


def data_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Why the datasets of a run cannot be read yet (`splits.preparation_problem`), once per dataset:
  the training mixture's sources and the eval sets (config.dataset.mixture, config.eval.datasets).
  """
  entries = mixture.mixture_entries(config.dataset) + mixture.eval_entries(
      config.dataset, config.eval
  )
  problems = []
  for dataset in dict.fromkeys(entry.dataset for entry in entries):
    problem = splits.preparation_problem(mixture.source_config(config.dataset, dataset))
    if problem:
      problems.append(problem)
  return problems


def resume_problem(config: ml_collections.ConfigDict, workdir: str | None) -> str | None:
  """Whether ``config`` may continue the run in ``workdir``: the fields that fix the saved state's
  structure or meaning must equal the saved config's (runs/run_config.py lists which)."""
  if not workdir or not os.path.isdir(workdir):
    return None
  payload = None
  try:
    payload = checkpoints.saved_config(workdir)
  except Exception:  # pylint: disable=broad-except - a damaged checkpoint: config.json still tells
    payload = None
  try:
    saved = (
        run_config.config_from_json(payload)
        if payload is not None
        else run_config.load_config(workdir)
    )
  except FileNotFoundError:
    return None
  except (ValueError, KeyError, AttributeError) as error:
    return f'{os.path.join(workdir, "config.json")} cannot be read ({error}); use another --workdir'
  mismatches = run_config.resume_mismatches(saved, config)
  if not mismatches:
    return None
  fields = '\n'.join(
      f'    {key}: {old!r} in the workdir, {new!r} now' for key, old, new in mismatches
  )
  return (
      f'{workdir} holds a run of another model; these fields differ from the run saved there:\n'
      f'{fields}\n  Start afresh in a new --workdir, or add --move_aside to move the old run to a '
      'timestamped folder beside it (nothing is deleted). Or rerun with the saved values.'
  )


def check_run(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    *,
    mode: str | None = None,
    device_count: int | None = None,
    check_resume: bool = True,
) -> None:
  """Everything wrong with running ``config`` in ``workdir``, in one `RunCheckError` (or nothing).
  The field checks come first: prerequisites of a config with bad fields are not looked at."""
  mode = mode or config.get('mode', 'train')
  problems = validate_config(config, mode=mode)
  if problems:
    raise RunCheckError(problems)
  problems = prerequisite_problems(config, workdir, mode=mode, device_count=device_count)
  if check_resume and mode in ('train', 'evaluate'):
    problem = resume_problem(config, workdir)
    if problem:
      problems.append(problem)
  if problems:
    raise RunCheckError(problems)
