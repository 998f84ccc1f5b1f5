"""Opening a trained run: `load_trained(workdir)`, the one way in.

It rebuilds the network from the config the newest checkpoint carries (workdir/config.json for runs
written before checkpoints carried it) and restores that checkpoint's params item only: not the
optimiser's moments, nor, where the run keeps an EMA, the raw params. No optimiser is built: the
restore's target is the params' abstract tree alone. Nothing reads the pretrained encoder file the run
started from; the checkpoint holds those weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from diffhand_jax import diffusion
from diffhand_jax.geometry import hand_model
from diffhand_jax.inference import depth, overrides as overrides_lib
from diffhand_jax.models import diffhand
from diffhand_jax.runs import checkpoints, run_config, state as state_lib


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained run, ready to sample: ``model.apply(diffhand.model_variables(params, batch_stats), ...)``."""

  workdir: str
  config: ml_collections.ConfigDict
  model: Any  # models.diffhand.DiffHand
  params: Any  # the EMA params where the run keeps them (unless use_ema=False)
  topology: hand_model.HandTopology  # joint regressor W, faces, template
  schedule: diffusion.Schedule
  step: int
  # The encoder's BatchNorm statistics that go with params ({} for a model without): the second
  # collection of `diffhand.model_variables(params, batch_stats)`.
  batch_stats: Any = dataclasses.field(default_factory=dict)
  # A depth-conditioned run's estimator (`depth.Estimator`, config.depth.estimator_init), None for an
  # RGB run: the samplers run it on each crop, so inference needs nothing the run did not name.
  estimator: Any = None


def load_trained(workdir: str, *, use_ema: bool = True, overrides: Any = None) -> TrainedRun:
  """The newest checkpoint of the run in ``workdir``, params only (see the module docstring).

  overrides: an inference command's changes to the run's config (`overrides.apply_overrides`, e.g. its
  --config flag's value), applied to the returned ``config`` after the model is built from the
  checkpoint's own: they choose the sampler and the data, never the network."""
  payload = checkpoints.saved_config(workdir)
  config = (
      run_config.config_from_json(payload)
      if payload is not None
      else run_config.load_config(workdir)
  )
  network = state_lib.build_network(config)
  if network.model.use_depth:  # checked before anything is read or computed
    problem = depth.estimator_problem(config.get('depth') or {})
    if problem:
      raise FileNotFoundError(f'{workdir} is a depth-conditioned run; its estimator: {problem}')
  params, batch_stats, step = checkpoints.restore_variables(
      workdir,
      state_lib.abstract_params(config, network.model),
      state_lib.abstract_batch_stats(config, network.model),
      config,
      use_ema=use_ema,
  )
  estimator = depth.load_estimator(config.depth) if network.model.use_depth else None
  if overrides is not None:
    config = overrides_lib.apply_overrides(config, overrides)
  return TrainedRun(
      workdir=workdir,
      config=config,
      model=network.model,
      params=params,
      topology=network.topology,
      schedule=network.schedule,
      step=step,
      batch_stats=batch_stats,
      estimator=estimator,
  )


def untrained_run(config: ml_collections.ConfigDict, seed: int = 0) -> TrainedRun:
  """A `TrainedRun` of `config`'s network with random params (and BatchNorm statistics), no workdir:
  for benchmarks that time a model's shapes (`bench live --smoke`, a paper model on a CPU), not its
  meshes."""
  network = state_lib.build_network(config)
  variables = diffhand.init_variables(
      network.model, jax.random.PRNGKey(seed), config.model.img_size
  )
  return TrainedRun(
      workdir='',
      config=config,
      model=network.model,
      params=variables['params'],
      topology=network.topology,
      schedule=network.schedule,
      step=0,
      batch_stats=variables['batch_stats'],
  )
