"""The training loop, in the sections of its work: mesh, input, model, shard, checkpoint, update step,
evaluate, loop.

  train_and_evaluate(config, workdir)   trains (resuming from workdir), evaluates, exports
  evaluate_checkpoint(config, workdir)  scores the latest checkpoint only

Writes (docs/design.md §8): workdir/config.json, workdir/metrics.jsonl, workdir/results.json,
workdir/checkpoints/ (orbax), workdir/tensorboard/, and workdir/export/step_<N>/ (predicted .obj meshes and
overlay .png). Only process 0 writes logs and exports; checkpoints are written collectively. The pieces
live beside this file: `sharding`, `step`, `evaluation`, `metric_log`, `preemption`, `throughput`.

`train_and_evaluate` reads top to bottom as those sections; each hands its work to a short function
below it. The checkpoint manager, the metric writers and the input pipeline are closed by one
`contextlib.ExitStack` on every exit: the end of training, a signal (SIGTERM, Ctrl-C), the NaN stop or
any other error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from diffhand_jax.data import input_pipeline, mixture
from diffhand_jax.models import diffhand, pretrained
from diffhand_jax.runs import checkpoints, init_from, presets, run_config, state as state_lib
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
  """Trains from scratch or from the newest checkpoint in ``workdir``; returns the final results
  (results.json's dict), or {'step', 'preempted': True, 'signal'} when a signal stopped the run after
  checkpointing its step. Nothing is written to ``workdir`` until the state to train is in hand (a
  refused run, such as one with an unreadable pretrained encoder, leaves it as it was)."""
  # --- Mesh ---------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)

  # --- Input: the splits, in memory or streamed (the batches start below, at the restored step) ---
  train_sources, eval_sets = open_splits(config, mesh)

  # --- Model --------------------------------------------------------------------------------------
  components = state_lib.build(config)

  # --- Shard: the state's layout by config.sharding_rules; batches split over every mesh axis -----
  abstract_state, shardings = sharding.sharded_abstract_state(
      config, components.model, components.optimizer, mesh
  )
  data_sharding = sharding.batch_sharding(mesh)

  with contextlib.ExitStack() as closing:  # what opens in here is closed on every way out
    # --- Checkpoint: resume from the newest readable one, else initialise; then the workdir -------
    restored = checkpoints.restore_for_training(workdir, abstract_state)
    state = resumed_or_initial_state(config, restored, components, shardings)
    start_step = int(state.step)
    os.makedirs(workdir, exist_ok=True)
    run_config.save_config(config, workdir)
    protect = None if restored is None else start_step  # the newest checkpoint known to restore
    manager = closing.enter_context(opened_checkpoints(workdir, config, protect))
    if jax.process_index() == 0:
      metric_log.truncate_metrics_log(os.path.join(workdir, 'metrics.jsonl'), start_step)

    # --- Update step: compiled ahead of the loop, its cost analysis gives the FLOPs per step ------
    step_fn = compile_train_step(config, components, mesh, abstract_state, shardings, data_sharding)
    meter = throughput_meter(config, step_fn, mesh)

    # --- Evaluate ---------------------------------------------------------------------------------
    logger = closing.enter_context(
        metric_log.Logger(
            workdir, num_train_steps=config.num_train_steps, every_steps=config.log_every_steps
        )
    )
    evaluator = evaluation.Evaluator(
        config,
        workdir,
        components,
        eval_sets=eval_sets,
        train_arrays=train_sources,
        logger=logger,
    )

    # --- Loop -------------------------------------------------------------------------------------
    batches = closing.enter_context(
        contextlib.closing(train_batches(config, train_sources, start_step))
    )
    loop_start = time.time()
    end = train_loop(
        config,
        workdir,
        state,
        step_fn=step_fn,
        batches=batches,
        data_sharding=data_sharding,
        meter=meter,
        logger=logger,
        manager=manager,
        evaluator=evaluator,
    )
    if end.signal_name is None and manager.latest_step() != end.step:
      checkpoints.save(manager, end.step, end.state, config, force=True)

  if end.signal_name is not None:
    return {'step': end.step, 'preempted': True, 'signal': end.signal_name}
  print0(
      f'trained steps {start_step}..{end.step} in '
      f'{metric_log.format_seconds(time.time() - loop_start)}',
      flush=True,
  )
  if end.results is None:  # nothing left to train: score what was restored
    return evaluate_checkpoint(config, workdir)
  return end.results


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


def open_train_split(config: ml_collections.ConfigDict) -> list[mixture.Source]:
  """The training sources of ``config``: config.dataset.mixture's, else the one-entry mixture of
  config.dataset.train_split (`mixture.open_sources`), each at most config.dataset.max_train_examples
  rows, in memory or streamed (`splits.open_split`), with its depth maps for a depth run
  (`depth.open_split`)."""
  return mixture.open_sources(
      config.dataset,
      config.dataset.get('max_train_examples'),
      depth_source=presets.depth_source(config),
      estimator=presets.depth_estimator(config),
  )


def open_splits(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[list[mixture.Source], list[evaluation.EvalSet]]:
  """(training sources, eval sets) of ``config``; prints their sizes and the mesh."""
  train_sources = open_train_split(config)
  eval_sets = evaluation.open_eval_sets(config)
  if len(train_sources) == 1 and len(eval_sets) == 1:  # the line of a one-dataset run, as before
    print0(
        f'data: {mixture.num_rows(train_sources[0])} train / '
        f'{mixture.num_rows(eval_sets[0].source)} {eval_sets[0].name} examples; '
        f'mesh {dict(mesh.shape)}',
        flush=True,
    )
  else:
    evaluated = ', '.join(f'{s.name} {mixture.num_rows(s.source)}' for s in eval_sets)
    print0(
        f'data: train on {mixture.describe(train_sources)}; evaluate on {evaluated}; '
        f'mesh {dict(mesh.shape)}',
        flush=True,
    )
  return train_sources, eval_sets


def train_batches(
    config: ml_collections.ConfigDict, train_sources: list[mixture.Source], start_step: int
) -> input_pipeline.BatchIterator:
  """This process's part of the global batch of each step from ``start_step`` on, endlessly: the
  mixture's sources (`mixture.train_batches_from_config`; one source gives exactly the batches of
  `input_pipeline.train_batches_from_config`), the input settings of config.dataset, the model's
  vertex scale and image size."""
  return mixture.train_batches_from_config(
      train_sources,
      config.dataset,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      vertex_scale=config.model.vertex_scale,
      image_size=config.model.img_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      depth_source=presets.depth_source(config),
  )


# --------------------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def opened_checkpoints(
    workdir: str, config: ml_collections.ConfigDict, protect_step: int | None
) -> Iterator[ocp.CheckpointManager]:
  """The checkpoint manager of workdir/checkpoints/ for the ``with`` block (``protect_step``: the
  checkpoint the run resumed from, which rotation keeps); on the way out, however it goes, the
  checkpoints already saved (the last good state) finish writing, the manager closes, and a save that
  failed (a full disk) leaves no temporary folder. Orbax's own report of a failed save is left out:
  the error says it in one line."""
  with checkpoints.quiet_orbax(failures_only=True):
    manager = checkpoints.checkpoint_manager(workdir, config, protect_step=protect_step)
    failing = True
    try:
      yield manager
      failing = False
    finally:
      checkpoints.close(manager, failing=failing)


def resumed_or_initial_state(
    config: ml_collections.ConfigDict,
    restored: state_lib.TrainState | None,
    components: state_lib.Components,
    shardings: state_lib.TrainState,
) -> state_lib.TrainState:
  """``restored``, or where there is none a fresh train state laid out by ``shardings``: random, then
  the pretrained encoder (config.model.encoder_init, read on the host and placed with the same
  shardings; a resume never reads it)."""
  if restored is not None:
    print0(f'resumed from step {int(restored.step)}', flush=True)
    return restored
  state = step_lib.init_sharded_state(
      config, components.model, components.optimizer, shardings, jax.random.PRNGKey(config.seed)
  )
  if config.get('init_from'):  # the two-stage schedule: every param of the source run, read only
    variables = init_from.read_source(config)
    state = state_lib.with_variables(state, variables, shardings)
    print0(f'weights from {config.init_from} (step {variables["step"]})', flush=True)
  else:
    encoder_variables = pretrained.encoder_variables(config)
    if encoder_variables is not None:
      state = state_lib.with_pretrained_encoder(state, encoder_variables, shardings)
      print0(f'encoder weights from {config.model.encoder_init}', flush=True)
  print0(f'initialised {diffhand.num_params(state.params):,} params', flush=True)
  return state


# --------------------------------------------------------------------------------------------------
# Update step
# --------------------------------------------------------------------------------------------------


def compile_train_step(
    config: ml_collections.ConfigDict,
    components: state_lib.Components,
    mesh: jax.sharding.Mesh,
    abstract_state: state_lib.TrainState,
    shardings: state_lib.TrainState,
    data_sharding: jax.sharding.NamedSharding,
):
  """The update step ``(state, batch) -> (state, loss parts)``, lowered and compiled for the state's
  and the batch's shardings."""
  return (
      step_lib.jit_train_step(
          config,
          components.model,
          components.optimizer,
          components.schedule,
          components.topology,
          mesh,
          shardings,
      )
      .lower(abstract_state, step_lib.abstract_train_batch(config, data_sharding))
      .compile()
  )


def throughput_meter(
    config: ml_collections.ConfigDict, compiled_step, mesh: jax.sharding.Mesh
) -> throughput.Meter:
  """The meter of the perf/ metrics: the compiled step's FLOPs against the device's peak (printed)."""
  peak_flops, peak_source = throughput.device_peak(str(config.model.get('dtype', 'float32')))
  meter = throughput.Meter(
      global_batch=int(config.batch_size),
      flops_per_step=throughput.compiled_flops(compiled_step),
      peak_flops=peak_flops,
      num_devices=int(mesh.size),
  )
  print0(
      f'train step: {meter.flops_per_step / 1e9:.2f} GFLOP per device per step; MFU against a '
      f'peak of {peak_flops / 1e12:.3g} TFLOP/s ({peak_source})',
      flush=True,
  )
  return meter


# --------------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoopEnd:
  """Where `train_loop` stopped: the state after its last step, that step, the last evaluation's
  results (None when it evaluated nothing) and the signal that stopped it (None: it ran to the end).
  """

  state: state_lib.TrainState
  step: int
  results: dict[str, Any] | None
  signal_name: str | None


def train_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    state: state_lib.TrainState,
    *,
    step_fn,
    batches: Iterator[dict[str, np.ndarray]],
    data_sharding: jax.sharding.NamedSharding,
    meter: throughput.Meter,
    logger: metric_log.Logger,
    manager: ocp.CheckpointManager,
    evaluator: evaluation.Evaluator,
) -> LoopEnd:
  """Steps from ``state.step`` to config.num_train_steps: logs every config.log_every_steps, saves at
  the manager's interval, evaluates every config.eval_every_steps and at the end. A SIGTERM or Ctrl-C
  stops it after the step in flight, with that step checkpointed; a non-finite loss stops it with a
  FloatingPointError before that state is saved."""
  results, window = None, []  # window: the loss parts of the steps since the last log line
  meter.reset()
  with preemption.PreemptionSignal() as preempt:
    for step in range(int(state.step), config.num_train_steps):
      waiting = time.perf_counter()
      batch = next(batches)
      global_batch = sharding.to_global(
          {k: batch[k] for k in step_lib.train_keys(config)}, data_sharding
      )
      meter.input_seconds += time.perf_counter() - waiting
      state, parts = step_fn(state, global_batch)
      window.append(parts)
      meter.steps += 1
      done = step + 1
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        log_window(config, workdir, done, window, meter, logger)
        window = []
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
        return LoopEnd(state, done, results, preempt.signal_name or 'SIGTERM')
      if done % config.eval_every_steps == 0 or done == config.num_train_steps:
        # results.json names a step only once its checkpoint is complete on disk.
        if manager.latest_step() != done:
          _check_finite(float(parts['total']), done, workdir)
          checkpoints.save(manager, done, state, config, force=True)
        checkpoints.finish(manager)
        with logger.report_progress.timed('eval', wait_jax_async_dispatch=False):
          results = evaluator(
              checkpoints.inference_params(state, config),
              int(state.step),
              checkpoints.inference_batch_stats(state, config),
          )
        meter.reset()  # evaluation time is no step's
  return LoopEnd(state, int(state.step), results, None)


def log_window(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int,
    window: list[dict[str, jax.Array]],
    meter: throughput.Meter,
    logger: metric_log.Logger,
) -> None:
  """Logs the mean loss parts of the steps in ``window`` (each a dict of scalars) with the window's
  perf/ metrics, as a metrics.jsonl row and a progress line; stops on a non-finite loss."""
  values = {k: float(np.mean([float(parts[k]) for parts in window])) for k in window[0]}
  _check_finite(values['total'], step, workdir)
  perf = meter.metrics()  # after the float()s above: the window's steps have finished
  values['steps_per_sec'] = 1.0 / perf['perf/step_time_seconds']
  values['loss'] = values['total']
  logger.write(step, 'train', {**values, **perf})
  print0(
      f'step {step}/{config.num_train_steps} | loss {values["total"]:.4f} '
      f'(vertex {values["vertex"]:.4f}, joint {values["joint"]:.4f}, '
      f'smooth {values["smooth"]:.4f}) | {perf["perf/images_per_sec"]:.1f} images/s, '
      f'{perf["perf/per_device_tflops_per_sec"] * 1e3:.1f} GFLOP/s per device, '
      f'MFU {perf["perf/mfu"]:.1%}, input wait {perf["perf/input_wait_fraction"]:.0%}',
      flush=True,
  )


def _check_finite(loss: float, step: int, workdir: str) -> None:
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'the training loss became {loss} by step {step}; stopping. The last good checkpoint is kept '
        f'in {os.path.join(workdir, "checkpoints")} (lower the learning rate or check the data)'
    )


# --------------------------------------------------------------------------------------------------
# Evaluate a checkpoint
# --------------------------------------------------------------------------------------------------


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Scores the newest checkpoint in ``workdir`` (EMA params when the config keeps them), reading its
  params only."""
  network = state_lib.build_network(config)
  params, batch_stats, step = (
      checkpoints.restore_variables(  # this process owns the run: it quarantines
          workdir,
          state_lib.abstract_params(config, network.model),
          state_lib.abstract_batch_stats(config, network.model),
          config,
          quarantine=True,
      )
  )
  train_sources = open_train_split(config)
  with metric_log.Logger(workdir) as logger:
    evaluator = evaluation.Evaluator(
        config,
        workdir,
        network,
        eval_sets=evaluation.open_eval_sets(config),
        train_arrays=train_sources,
        logger=logger,
    )
    return evaluator(params, step, batch_stats)
