"""The training loop, in the sections of its work: mesh, input, model, shard, update step, checkpoint,
evaluate, loop.

  train_and_evaluate(config, workdir)   trains (resuming from workdir), evaluates, exports
  evaluate_checkpoint(config, workdir)  scores the latest checkpoint only

Writes (docs/design.md §8): workdir/config.json, workdir/metrics.jsonl, workdir/results.json,
workdir/checkpoints/ (orbax), workdir/tensorboard/, and workdir/export/step_<N>/ (predicted .obj meshes and
overlay .png). Only process 0 writes logs and exports; checkpoints are written collectively. The pieces
live beside this file: `sharding`, `step`, `evaluation`, `metric_log`, `preemption`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from diffhand_jax.data import input_pipeline, splits
from diffhand_jax.models import diffhand, pretrained
from diffhand_jax.runs import checkpoints, run_config, state as state_lib
from diffhand_jax.training import (
    evaluation,
    metric_log,
    preemption,
    sharding,
    step as step_lib,
    throughput,
)

print0 = metric_log.print0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains from scratch or from the newest checkpoint in ``workdir``; returns the final results."""
  os.makedirs(workdir, exist_ok=True)
  run_config.save_config(config, workdir)

  # ----------------------------------------------------------------------------------------------
  # Mesh
  # ----------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)

  # ----------------------------------------------------------------------------------------------
  # Input
  # ----------------------------------------------------------------------------------------------
  train_arrays = splits.open_split(
      config.dataset, config.dataset.train_split, config.dataset.get('max_train_examples')
  )
  eval_arrays = evaluation.eval_arrays(config)
  print0(
      f'data: {len(train_arrays["image"])} train / {len(eval_arrays["image"])} '
      f'{config.dataset.eval_split} examples; mesh {dict(mesh.shape)}',
      flush=True,
  )

  # ----------------------------------------------------------------------------------------------
  # Model
  # ----------------------------------------------------------------------------------------------
  components = state_lib.build(config)
  topology, model, schedule, optimizer = (
      components.topology,
      components.model,
      components.schedule,
      components.optimizer,
  )

  # ----------------------------------------------------------------------------------------------
  # Shard: the state's layout by config.sharding_rules; batches split over every mesh axis
  # ----------------------------------------------------------------------------------------------
  abstract_state, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  data_sharding = sharding.batch_sharding(mesh)

  # ----------------------------------------------------------------------------------------------
  # Checkpoint: resume from the newest readable one, else initialise (random, then the pretrained
  # encoder read on the host and placed with the state's shardings; a resume never reads it)
  # ----------------------------------------------------------------------------------------------
  manager, restored = checkpoints.open_for_training(workdir, config, abstract_state)
  if restored is None:
    state = step_lib.init_sharded_state(
        config, model, optimizer, shardings, jax.random.PRNGKey(config.seed)
    )
    encoder_params = pretrained.encoder_params(config)
    if encoder_params is not None:
      state = state_lib.with_pretrained_encoder(state, encoder_params, shardings)
      print0(f'encoder weights from {config.model.encoder_init}', flush=True)
    print0(f'initialised {diffhand.num_params(state.params):,} params', flush=True)
  else:
    state = restored
    print0(f'resumed from step {int(state.step)}', flush=True)
  start_step = int(state.step)
  if jax.process_index() == 0:
    metric_log.truncate_metrics_log(os.path.join(workdir, 'metrics.jsonl'), start_step)

  # ----------------------------------------------------------------------------------------------
  # Update step
  # ----------------------------------------------------------------------------------------------
  # Compiled ahead of the loop, so that its cost analysis gives the FLOPs per step (perf/ metrics).
  step_fn = (
      step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
      .lower(abstract_state, step_lib.abstract_train_batch(config, data_sharding))
      .compile()
  )
  peak_flops, peak_source = throughput.device_peak(str(config.model.get('dtype', 'float32')))
  meter = throughput.Meter(
      global_batch=int(config.batch_size),
      flops_per_step=throughput.compiled_flops(step_fn),
      peak_flops=peak_flops,
      num_devices=int(mesh.size),
  )
  print0(
      f'train step: {meter.flops_per_step / 1e9:.2f} GFLOP per device per step; MFU against a '
      f'peak of {peak_flops / 1e12:.3g} TFLOP/s ({peak_source})',
      flush=True,
  )

  # ----------------------------------------------------------------------------------------------
  # Evaluate
  # ----------------------------------------------------------------------------------------------
  reconstruct_fn = diffhand.make_reconstruct_fn(
      model,
      num_steps=config.model.sampling_steps,
      num_hypotheses=config.model.num_hypotheses,
      eta=config.model.eta,
      schedule=schedule,
  )

  def evaluate(state):
    return evaluation.run_evaluation(
        checkpoints.inference_params(state, config),
        int(state.step),
        config,
        workdir,
        topology,
        model,
        reconstruct_fn,
        eval_arrays,
        train_arrays,
        logger,
    )

  # ----------------------------------------------------------------------------------------------
  # Loop
  # ----------------------------------------------------------------------------------------------
  logger = metric_log.Logger(
      workdir, num_train_steps=config.num_train_steps, every_steps=config.log_every_steps
  )
  batches = input_pipeline.train_batches(
      train_arrays,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      vertex_scale=config.model.vertex_scale,
      image_size=config.model.img_size,
      colour_strength=config.dataset.get('colour_jitter', 0.0),
      crop_margin=config.dataset.get('crop_margin'),
      augment=input_pipeline.augment_options(config.dataset),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_workers=config.dataset.get('num_workers'),
  )
  results = None
  history = []
  loop_start = time.time()
  meter.reset()
  try:
    with preemption.PreemptionSignal() as preempt:
      for step in range(start_step, config.num_train_steps):
        waiting = time.perf_counter()
        batch = next(batches)
        global_batch = sharding.to_global({k: batch[k] for k in step_lib.TRAIN_KEYS}, data_sharding)
        meter.input_seconds += time.perf_counter() - waiting
        state, parts = step_fn(state, global_batch)
        history.append(parts)
        meter.steps += 1
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
          values = {k: float(np.mean([float(p[k]) for p in history])) for k in history[0]}
          _check_finite(values['total'], done, workdir)
          perf = meter.metrics()  # after the float()s above: the window's steps have finished
          values['steps_per_sec'] = 1.0 / perf['perf/step_time_seconds']
          values['loss'] = values['total']
          logger.write(done, 'train', {**values, **perf})
          print0(
              f'step {done}/{config.num_train_steps} | loss {values["total"]:.4f} '
              f'(vertex {values["vertex"]:.4f}, joint {values["joint"]:.4f}, '
              f'smooth {values["smooth"]:.4f}) | {perf["perf/images_per_sec"]:.1f} images/s, '
              f'{perf["perf/per_device_tflops_per_sec"] * 1e3:.1f} GFLOP/s per device, '
              f'MFU {perf["perf/mfu"]:.1%}, input wait {perf["perf/input_wait_fraction"]:.0%}',
              flush=True,
          )
          history = []
          meter.reset()
        logger.report_progress(done)
        preempted = preempt.received or manager.reached_preemption(done)
        if preempted or manager.should_save(done):
          # Never let a diverged state replace the last good checkpoint.
          _check_finite(float(parts['total']), done, workdir)
          checkpoints.save(manager, done, state, config, force=preempted)
        if preempted:
          manager.wait_until_finished()
          how = 'interrupted (Ctrl-C)' if preempt.signal_name == 'SIGINT' else 'preempted'
          print0(
              f'{how}: saved a checkpoint at step {done}; rerun the same command to resume',
              flush=True,
          )
          manager.close()
          logger.close()
          return {'step': done, 'preempted': True, 'signal': preempt.signal_name or 'SIGTERM'}
        if done % config.eval_every_steps == 0 or done == config.num_train_steps:
          with logger.report_progress.timed('eval', wait_jax_async_dispatch=False):
            results = evaluate(state)
          meter.reset()  # evaluation time is no step's
  except BaseException:
    # Let the checkpoints already saved (the last good state) finish writing before the error leaves.
    manager.wait_until_finished()
    manager.close()
    logger.close()
    raise
  if manager.latest_step() != int(state.step):
    checkpoints.save(manager, int(state.step), state, config, force=True)
  manager.wait_until_finished()
  manager.close()
  logger.close()
  print0(
      f'trained steps {start_step}..{int(state.step)} in '
      f'{metric_log.format_seconds(time.time() - loop_start)}',
      flush=True,
  )
  if results is None:  # nothing left to train: score what was restored
    results = evaluate_checkpoint(config, workdir)
  return results


def _check_finite(loss: float, step: int, workdir: str) -> None:
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'the training loss became {loss} by step {step}; stopping. The last good checkpoint is kept '
        f'in {os.path.join(workdir, "checkpoints")} (lower the learning rate or check the data)'
    )


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Scores the newest checkpoint in ``workdir`` (EMA params when the config keeps them), reading its
  params only."""
  components = state_lib.build_network(config)
  params, step = checkpoints.restore_params(
      workdir, state_lib.abstract_params(config, components.model), config
  )
  train_arrays = splits.open_split(
      config.dataset, config.dataset.train_split, config.dataset.get('max_train_examples')
  )
  reconstruct_fn = diffhand.make_reconstruct_fn(
      components.model,
      num_steps=config.model.sampling_steps,
      num_hypotheses=config.model.num_hypotheses,
      eta=config.model.eta,
      schedule=components.schedule,
  )
  logger = metric_log.Logger(workdir)
  try:
    return evaluation.run_evaluation(
        params,
        step,
        config,
        workdir,
        components.topology,
        components.model,
        reconstruct_fn,
        evaluation.eval_arrays(config),
        train_arrays,
        logger,
    )
  finally:
    logger.close()
