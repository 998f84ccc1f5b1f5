"""Sampling a trained model, shared by the inference commands (predict, submission, the hypotheses
benchmark).

  * `Sampler`: a trained model's batched sampler: (M, H, W, 3) normalised images → K hypotheses each,
    padded to one batch shape (one compilation), with optional TTA.
  * `SamplerCache`: one opened run's samplers, one per setting, for callers that sample many times.
  * `progress_printer`: a one-line progress bar for long runs.

Crops and the wrist's camera-frame position are in `crops.py`; `--config.key=value` overrides in
`overrides.py`; joints from a mesh are `geometry.conventions.regress_joints`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry import hypotheses
from diffhand_jax.inference import depth, tta
from diffhand_jax.models import diffhand

# ==================================================================================================
# Batched sampling of a trained model
# ==================================================================================================


@dataclasses.dataclass
class Sampler:
  """A trained DiffHand's sampler over arrays of any length.

  model, params, schedule: from `loading.load_trained`. vertex_scale: metres per model unit.
  Outputs are root-relative metres in the frame the model saw (mirrored for left hands).
  """

  model: diffhand.DiffHand
  params: Any
  schedule: Any
  vertex_scale: float
  num_steps: int = 10
  num_hypotheses: int = 1
  eta: float = 0.0
  batch_size: int = 16
  batch_stats: Any = None  # the encoder's BatchNorm statistics, for a model that has them
  # A depth model's estimator (`depth.load_estimator`): it runs on each crop inside the sampler's
  # compiled call, so callers pass images only.
  estimator: Any = None

  def __post_init__(self):
    if self.num_hypotheses < 1 or self.num_steps < 1 or self.batch_size < 1:
      raise ValueError('inference.Sampler: num_hypotheses, num_steps and batch_size must be >= 1')
    self._fn = depth.make_reconstruct_fn(
        self.model,
        self.estimator,
        num_steps=int(self.num_steps),
        num_hypotheses=int(self.num_hypotheses),
        eta=float(self.eta),
        schedule=self.schedule,
    )

  def settings(self) -> dict[str, Any]:
    return {
        'steps': int(self.num_steps),
        'eta': float(self.eta),
        'hypotheses': int(self.num_hypotheses),
        'diffusion': bool(self.model.diffusion),
    }

  def sample(
      self, images: np.ndarray, key: jax.Array, progress: Callable[[int, int], None] | None = None
  ) -> dict[str, np.ndarray]:
    """images float32 (M, H, W, 3), normalised → {'vertices': (M, K, N, 3) m, 'camera': (M, 3)}.

    Batch i uses the key fold_in(key, i); the last batch is padded by repeating its last image.
    """
    images = np.asarray(images, np.float32)
    count = len(images)
    if count == 0:
      raise ValueError('inference.Sampler.sample: no images')
    vertices, cameras = [], []
    for index, start in enumerate(range(0, count, self.batch_size)):
      rows = np.minimum(np.arange(start, start + self.batch_size), count - 1)
      valid = min(self.batch_size, count - start)
      out = self._fn(
          self.params,
          jnp.asarray(images[rows]),
          jax.random.fold_in(key, index),
          batch_stats=self.batch_stats,
      )
      vertices.append(np.asarray(out['vertices'], np.float64)[:valid])
      cameras.append(np.asarray(out['camera'], np.float64)[:valid, 0])
      if progress is not None:
        progress(start + valid, count)
    return {
        'vertices': np.concatenate(vertices) * self.vertex_scale,
        'camera': np.concatenate(cameras),
    }

  def predict(
      self,
      images: np.ndarray,
      key: jax.Array,
      *,
      method: str = 'mean',
      tta_config: tta.TTAConfig | None = None,
      progress: Callable[[int, int], None] | None = None,
  ) -> dict[str, np.ndarray]:
    """Aggregated meshes, optionally with TTA.

    Returns {'vertices': (M, N, 3) m (the `method` aggregate, TTA-averaged when tta_config),
    'hypotheses': (M, K, N, 3) m of the un-augmented pass (their uncertainty: `hypotheses.spread`),
    'camera': (M, 3) of the un-augmented pass}.
    """
    reference = self.sample(images, key, progress)
    mesh = hypotheses.aggregate(reference['vertices'], method)
    if tta_config is not None:

      def predict_fn(batch):
        if batch is images:  # the reference pass: already computed
          return mesh
        return hypotheses.aggregate(self.sample(batch, key)['vertices'], method)

      mesh = tta.tta_predict(predict_fn, images, tta_config)
    return {
        'vertices': mesh,
        'hypotheses': reference['vertices'],
        'camera': reference['camera'],
    }


class SamplerCache:
  """The `Sampler`s of one opened run, one per setting, each built on first use.

  A long-lived caller (the web app) opens the run once and asks for a sampler per request; each
  setting (steps, hypotheses, η, batch; for video also the warm start's strength and the aggregate)
  then compiles once, not on every request.
  run: a `loading.TrainedRun`.
  """

  def __init__(self, run: Any):
    self.run = run
    self._samplers: dict[tuple[Any, ...], Any] = {}  # a Sampler, or what another module built

  def get(self, *, num_steps: int, num_hypotheses: int, eta: float, batch_size: int) -> Sampler:
    key = ('sampler', int(num_steps), int(num_hypotheses), float(eta), int(batch_size))
    return self.cached(
        key,
        lambda: Sampler(
            self.run.model,
            self.run.params,
            self.run.schedule,
            float(self.run.config.model.vertex_scale),
            num_steps=key[1],
            num_hypotheses=key[2],
            eta=key[3],
            batch_size=key[4],
            batch_stats=self.run.batch_stats,
            estimator=getattr(self.run, 'estimator', None),
        ),
    )

  def cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """`build()`, called on the first use of `key` only: for samplers defined in other modules (the
    video's warm start, `video.warm_start_sampler`). Keys should start with a name of their own."""
    if key not in self._samplers:
      self._samplers[key] = build()
    return self._samplers[key]


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
  """A one-line text progress bar: `label [#####.....] done/total`."""
  stream = stream or sys.stderr

  def report(done: int, total: int) -> None:
    filled = int(30 * done / max(total, 1))
    end = '\n' if done >= total else ''
    stream.write(f'\r{label} [{"#" * filled}{"." * (30 - filled)}] {done}/{total}{end}')
    stream.flush()

  return report
