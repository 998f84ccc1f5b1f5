"""The whole DiffHand model: image encoder E, optional depth block, cross-modality decoder, camera head.

Model space (docs/design.md §2): vertices are root-relative metres divided by `vertex_scale` (0.1 by default).
Everything here, inputs and outputs, is in model space; multiply by `vertex_scale` for metres.

    model = build_model(config)                  # config: diffhand_jax.runs.model_presets.get_model_config(...)
    params = init(model, key, config.img_size)
    cond = model.apply({'params': params}, images, method=DiffHand.encode)
    x0_hat, camera = model.apply({'params': params}, cond, x_t, t, method=DiffHand.denoise)
    out = reconstruct(model, params, images, key, num_steps=10, num_hypotheses=4)

`reconstruct` encodes each image once, outside the sampler's `lax.scan`, and shares that condition across
all hypotheses (a `vmap` over the noise only).

The camera is weak-perspective (s, tx, ty) from I_E, in the convention of `losses.project_weak_perspective`:
u = s·X + tx, v = s·Y + ty with X in model space and (u, v) in normalised crop coordinates ([-1, 1]).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import flax.core
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import diffusion
from diffhand_jax.models import cnn, decoder as decoder_lib, hrnet, vit

_FILE = "diffhand_jax/models/diffhand.py"
PyTree = Any


@flax.struct.dataclass
class Condition:
  """The encoded image: I_F features (B, P, C) and I_E embedding (B, C). A pytree."""

  features: jax.Array
  embedding: jax.Array


class DepthBlock(nn.Module):
  """Convolutions on a depth image whose output is added to I_F on the patch grid (docs/design.md §4).

  depth (B, H, W, 1) → (B, P, C) with P = (H/p)·(W/p). A 3×3 conv, up to two stride-2 3×3 convs, then
  a patchifying conv for the remaining stride, each followed by SiLU, and a 1×1 output projection.
  The inner convs use the normal (lecun) initialisation; the output projection's weights and bias start
  at zero, so at initialisation the block adds exactly 0 and the RGB model's outputs are unchanged. (The
  paper zero-initialises every layer; then no gradient would ever reach the inner weights.)
  """

  channels: tuple[int, ...] = (32, 64, 128)

  @nn.compact
  def __call__(self, depth: jax.Array, grid: tuple[int, int], out_dim: int) -> jax.Array:
    batch, height, width = depth.shape[:3]
    grid_h, grid_w = grid
    if height % grid_h or width % grid_w or height // grid_h != width // grid_w:
      raise ValueError(
          f"{_FILE}: depth of size {height}x{width} does not tile the {grid_h}x{grid_w} "
          "patch grid with square patches."
      )
    patch = height // grid_h
    num_halvings = 0
    while num_halvings < 2 and patch % (2 ** (num_halvings + 1)) == 0:
      num_halvings += 1
    remaining = patch // 2**num_halvings
    channels = list(self.channels) + [self.channels[-1]] * max(
        0, num_halvings + 2 - len(self.channels)
    )
    x = nn.silu(nn.Conv(channels[0], (3, 3), name="conv_in")(depth))
    for k in range(num_halvings):
      x = nn.silu(nn.Conv(channels[k + 1], (3, 3), strides=(2, 2), name=f"conv_down{k}")(x))
    if remaining > 1:
      x = nn.silu(
          nn.Conv(
              channels[-1],
              (remaining, remaining),
              strides=(remaining, remaining),
              padding="VALID",
              name="conv_patch",
          )(x)
      )
    chex.assert_shape(x, (batch, grid_h, grid_w, None))
    x = nn.Dense(
        out_dim,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.zeros,
        name="zero_proj",
    )(x)
    return x.reshape(batch, grid_h * grid_w, out_dim)


def _camera_bias_init(key, shape, dtype=jnp.float32):
  del key
  # s = 1, t = 0: a root-relative hand in model space (about ±2) then spans the normalised crop.
  return jnp.zeros(shape, dtype).at[0].set(1.0)


class DiffHand(nn.Module):
  """DiffHand (paper Fig. 2): f_θ(x_t, t, I[, depth]) → (x̂_0, camera).

  Attributes:
    encoder: image module, images (B, H, W, 3) → (I_F (B, P, C), I_E (B, C)) (models/vit.py, cnn.py,
      hrnet.py). An HRNet also holds BatchNorm statistics (the 'batch_stats' collection).
    decoder: CrossModalityDecoder or VanillaDecoder (models/decoder.py).
    num_vertices: N.
    diffusion: False gives the one-pass regression variant of the ablation: `denoise` ignores its
      x_t and t and decodes from x_t = 0 at t = `regression_timestep`.
    regression_timestep: the fixed t of the regression variant.
    use_depth: add the DepthBlock; `encode` then needs a depth image.
    depth_channels: the DepthBlock's inner widths.
    orientation_head: add a linear head on I_E that predicts the hand's global orientation
      (`orientation`), for an auxiliary training loss (config.loss.lambda_orientation). Not the paper's.
  """

  encoder: nn.Module
  decoder: nn.Module
  num_vertices: int = 778
  diffusion: bool = True
  regression_timestep: int = 0
  use_depth: bool = False
  depth_channels: tuple[int, ...] = (32, 64, 128)
  orientation_head: bool = False

  def setup(self):
    self.camera_head = nn.Dense(
        3, kernel_init=nn.initializers.normal(0.01), bias_init=_camera_bias_init, name="camera_head"
    )
    if self.use_depth:
      self.depth_block = DepthBlock(self.depth_channels, name="depth_block")
    if self.orientation_head:
      self.orientation_dense = nn.Dense(6, name="orientation_head")

  def encode(
      self, images: jax.Array, depth: jax.Array | None = None, train_norm: bool = False
  ) -> Condition:
    """images float32 (B, H, W, 3), normalised; depth (B, H, W) or (B, H, W, 1) → Condition.

    train_norm: the encoder's BatchNorms normalise with the batch's statistics and update the running
    ones (apply with mutable=['batch_stats']); False uses the running statistics. Encoders without
    BatchNorm ignore it."""
    chex.assert_rank(images, 4)
    if self.use_depth and depth is None:
      raise ValueError(
          f"{_FILE}: this model has use_depth=True; pass depth= to encode/reconstruct."
      )
    if not self.use_depth and depth is not None:
      raise ValueError(
          f"{_FILE}: depth was given but the model has use_depth=False "
          "(set config.model.use_depth=True)."
      )
    if isinstance(self.encoder, hrnet.HRNet):
      features, embedding = self.encoder(images, train=train_norm)
    else:
      features, embedding = self.encoder(images)
    batch, num_patches, _ = features.shape
    chex.assert_shape(embedding, (batch, features.shape[-1]))
    if self.use_depth:
      if depth.ndim == 3:
        depth = depth[..., None]
      chex.assert_shape(depth, (batch, images.shape[1], images.shape[2], 1))
      grid = _patch_grid(images.shape[1], images.shape[2], num_patches)
      # Added on the patch grid after the encoder (ControlNet-style); exactly + 0 at initialisation.
      features = features + self.depth_block(
          depth.astype(features.dtype), grid, features.shape[-1]
      ).astype(features.dtype)
    return Condition(features=features, embedding=embedding)

  def camera(self, cond: Condition) -> jax.Array:
    """Weak-perspective camera (s, tx, ty) (B, 3) float32, from I_E."""
    return self.camera_head(cond.embedding.astype(jnp.float32))

  def orientation(self, cond: Condition) -> jax.Array:
    """The hand's global orientation predicted from I_E, (B, 6) float32: the finger axis and the palm
    normal, each meant to be a unit vector (`conventions.orientation_frame` of the truth)."""
    if not self.orientation_head:
      raise ValueError(
          f"{_FILE}: this model has no orientation head (config.model.orientation_head)."
      )
    return self.orientation_dense(cond.embedding.astype(jnp.float32))

  def training_pass(
      self,
      images: jax.Array,
      x_t: jax.Array,
      t: jax.Array,
      train_norm: bool = False,
      depth: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """encode once, then {'x0_hat' (B, N, 3), 'camera' (B, 3)}, plus 'orientation' (B, 6) when the
    model has the orientation head: what the training loss scores. train_norm: as for `encode`;
    depth (B, H, W[, 1]) for a use_depth model."""
    cond = self.encode(images, depth, train_norm=train_norm)
    x0_hat, camera = self.denoise(cond, x_t, t)
    out = {"x0_hat": x0_hat, "camera": camera}
    if self.orientation_head:
      out["orientation"] = self.orientation(cond)
    return out

  def denoise(self, cond: Condition, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_t (B, N, 3), t int32 (B,) → (x̂_0 (B, N, 3) float32, camera (B, 3) float32)."""
    batch = cond.embedding.shape[0]
    chex.assert_shape(x_t, (batch, self.num_vertices, 3))
    chex.assert_shape(t, (batch,))
    if not self.diffusion:
      x_t = jnp.zeros_like(x_t)
      t = jnp.full_like(t, self.regression_timestep)
    x0_hat = self.decoder(x_t, t.astype(jnp.int32), cond.features, cond.embedding)
    return x0_hat.astype(jnp.float32), self.camera(cond)

  def __call__(
      self, images: jax.Array, x_t: jax.Array, t: jax.Array, depth: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """encode + denoise: images (B, H, W, 3), x_t (B, N, 3), t (B,) → (x̂_0 (B, N, 3), camera (B, 3))."""
    cond = self.encode(images, depth)
    if self.orientation_head:
      self.orientation(cond)  # so that `init` (which calls this) creates the head's params
    return self.denoise(cond, x_t, t)


def model_variables(params: PyTree, batch_stats: PyTree | None = None) -> dict[str, PyTree]:
  """What `model.apply` takes: {'params': params}, with 'batch_stats' (the encoder's BatchNorm running
  statistics) when the model has them. The one place the two collections are put together."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _patch_grid(height: int, width: int, num_patches: int) -> tuple[int, int]:
  patch = math.isqrt(height * width // num_patches)
  if patch * patch * num_patches != height * width or height % patch or width % patch:
    raise ValueError(f"{_FILE}: cannot place {num_patches} patches on a {height}x{width} image.")
  return height // patch, width // patch


# -------------------------------------------------------------------------------------------------------
# Building and initialising
# -------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(name: Any) -> Any:
  if not isinstance(name, str):
    return name
  if name not in _DTYPES:
    raise ValueError(f"{_FILE}: config dtype must be one of {sorted(_DTYPES)}, got {name!r}.")
  return _DTYPES[name]


def encoder_family(name: str) -> str:
  """The family of the encoder a model config names (config.model.encoder): 'cnn' for models/cnn.py's
  ('cnn_small', ...), 'hrnet' for models/hrnet.py's (timm names, 'hrnet_w64', ...), else 'vit'
  (models/vit.py, timm names). Pretrained weights are read by family (models/pretrained.py)."""
  if name.startswith("cnn_"):
    return "cnn"
  return "hrnet" if hrnet.is_hrnet(name) else "vit"


# Family (`encoder_family`) -> create(model_name, img_size=..., **fields) -> the encoder module.
_ENCODER_CREATE = {"cnn": cnn.create, "hrnet": hrnet.create, "vit": vit.create}
_ENCODER_CLASS = {"cnn": cnn.ConvEncoder, "hrnet": hrnet.HRNet, "vit": vit.VisionTransformer}


def check_encoder_overrides(encoder: str, overrides: dict[str, Any]) -> None:
  """Raises ValueError naming the fields of config.model.encoder_overrides that `encoder`'s family has
  no field for (the ViT's depth or embed_dim set with an HRNet, say), instead of the dataclass's
  TypeError from deep inside `create`."""
  family = encoder_family(encoder)
  fields = {
      f.name for f in dataclasses.fields(_ENCODER_CLASS[family]) if f.name not in ("parent", "name")
  }
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(
        f"config.model.encoder_overrides sets {', '.join(unknown)}, which the {family} encoder "
        f"{encoder!r} does not have; its fields are {', '.join(sorted(fields))} "
        "(unset the others: the config shows them as None)"
    )


def encoder_overrides(model_config: Any) -> dict[str, Any]:
  """The encoder fields config.model.encoder_overrides sets (None = the named model's own value)."""
  overrides = model_config.get("encoder_overrides", None) or {}
  overrides = dict(overrides.to_dict() if hasattr(overrides, "to_dict") else overrides)
  return {name: value for name, value in overrides.items() if value is not None}


def build_model(model_config: Any, template_vertices: np.ndarray | None = None) -> DiffHand:
  """The DiffHand that a model config (diffhand_jax/runs/model_presets.py) describes.

  template_vertices (N, 3): the mesh the decoder's FPS hierarchy is computed on; None = MANO's
  procedural template (mano.load_procedural()), N = 778.
  """
  dtype = _dtype(model_config.get("dtype", "float32"))
  overrides = encoder_overrides(model_config)
  check_encoder_overrides(model_config.encoder, overrides)
  overrides.setdefault("dtype", dtype)
  create = _ENCODER_CREATE[encoder_family(model_config.encoder)]
  encoder = create(model_config.encoder, img_size=model_config.img_size, **overrides)
  decoder = decoder_lib.build_decoder(model_config, template_vertices, dtype=dtype)
  return DiffHand(
      encoder=encoder,
      decoder=decoder,
      num_vertices=int(model_config.num_vertices),
      diffusion=bool(model_config.diffusion),
      regression_timestep=int(model_config.get("regression_timestep", 0)),
      use_depth=bool(model_config.get("use_depth", False)),
      depth_channels=tuple(int(c) for c in model_config.get("depth_channels", (32, 64, 128))),
      orientation_head=bool(model_config.get("orientation_head", False)),
  )


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
  if isinstance(image_size, (int, np.integer)):
    return int(image_size), int(image_size)
  height, width = image_size
  return int(height), int(width)


def init(
    model: DiffHand, key: jax.Array, image_size: int | tuple[int, int], batch: int = 1
) -> PyTree:
  """Random params for `model` (jit-compiled init). Pretrained encoder weights are put in afterwards,
  on the host (models/pretrained.py)."""
  return init_variables(model, key, image_size, batch)["params"]


def init_variables(
    model: DiffHand, key: jax.Array, image_size: int | tuple[int, int], batch: int = 1
) -> dict[str, PyTree]:
  """Random variables for `model`: {'params': ..., 'batch_stats': ...}, 'batch_stats' the encoder's
  BatchNorm statistics (mean 0, variance 1) or {} when it has none."""
  variables = decoder_lib.jit_init(model, key, *_dummy_inputs(model, image_size, batch))
  variables = flax.core.unfreeze(variables)
  return {"params": dict(variables["params"]), "batch_stats": variables.get("batch_stats", {})}


def _dummy_inputs(model: DiffHand, image_size: int | tuple[int, int], batch: int) -> tuple:
  height, width = _image_hw(image_size)
  images = jnp.zeros((batch, height, width, 3), jnp.float32)
  x_t = jnp.zeros((batch, model.num_vertices, 3), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  depth = jnp.zeros((batch, height, width, 1), jnp.float32) if model.use_depth else None
  return images, x_t, t, depth


def param_shapes(model: DiffHand, image_size: int | tuple[int, int], batch: int = 1) -> PyTree:
  """The params' shapes and dtypes (jax.ShapeDtypeStruct leaves), without computing anything."""
  return variable_shapes(model, image_size, batch)["params"]


def variable_shapes(
    model: DiffHand, image_size: int | tuple[int, int], batch: int = 1
) -> dict[str, PyTree]:
  """`init_variables`'s shapes and dtypes, {'params', 'batch_stats'}, without computing anything."""
  inputs = _dummy_inputs(model, image_size, batch)
  shapes = jax.eval_shape(lambda k: model.init(k, *inputs), jax.random.key(0))
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def num_params(tree: PyTree) -> int:
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


# -------------------------------------------------------------------------------------------------------
# Inference
# -------------------------------------------------------------------------------------------------------


def initial_noise(
    key: jax.Array, num_hypotheses: int, batch: int, num_vertices: int
) -> tuple[jax.Array, jax.Array]:
  """The x_T (K, B, N, 3) and the per-hypothesis sampler keys (K, ...) that `reconstruct` uses."""
  keys = jax.random.split(key, num_hypotheses)
  split = jax.vmap(jax.random.split)(keys)  # (K, 2, ...)
  noise_keys, sampler_keys = split[:, 0], split[:, 1]
  x_T = jax.vmap(lambda k: jax.random.normal(k, (batch, num_vertices, 3), jnp.float32))(noise_keys)
  return x_T, sampler_keys


def reconstruct(
    model: DiffHand,
    params: PyTree,
    images: jax.Array,
    key: jax.Array,
    *,
    num_steps: int = 10,
    num_hypotheses: int = 1,
    eta: float = 0.0,
    schedule: diffusion.Schedule | None = None,
    depth: jax.Array | None = None,
    noise: jax.Array | None = None,
    batch_stats: PyTree | None = None,
) -> dict[str, jax.Array]:
  """Meshes for a batch of images: DDIM from noise, the image encoded once.

  Args:
    model, params: a DiffHand and its params (the 'params' collection).
    images: float32 (B, H, W, 3), normalised.
    key: PRNG key for the starting noise (and for the sampler when eta > 0); see `initial_noise`.
    num_steps, num_hypotheses: static Python ints (jit with static_argnames or functools.partial).
    eta: DDIM η (0 = deterministic given x_T).
    schedule: the training schedule; None = diffusion.cosine_schedule().
    depth: (B, H, W[, 1]) for a use_depth model.
    noise: optional x_T (K, B, N, 3) to use instead of drawing it from `key`.
    batch_stats: the encoder's BatchNorm running statistics, for a model that has them (HRNet).

  Returns a dict of float32 arrays, in model space:
    vertices (B, K, N, 3), camera (B, K, 3), vertices_mean (B, N, 3) (over hypotheses) and
    vertices_std (B, N) (root-mean-square over xyz of the per-coordinate std over hypotheses; 0 for K=1).
  The regression variant (diffusion=False) runs one decoder pass; its K hypotheses are identical.
  """
  variables = model_variables(params, batch_stats)
  cond = model.apply(variables, images, depth, method=DiffHand.encode)
  batch = images.shape[0]
  camera = model.apply(variables, cond, method=DiffHand.camera)
  x_T, sampler_keys = initial_noise(key, num_hypotheses, batch, model.num_vertices)
  if noise is not None:
    chex.assert_shape(noise, x_T.shape)
    x_T = noise.astype(jnp.float32)

  def denoise_fn(x_t, t):
    return model.apply(variables, cond, x_t, t, method=DiffHand.denoise)[0]

  if model.diffusion:
    schedule = diffusion.cosine_schedule() if schedule is None else schedule
    stochastic = not (isinstance(eta, (int, float)) and eta == 0.0)

    def sample_one(x_start, sampler_key):
      return diffusion.ddim_sample(
          denoise_fn,
          x_start,
          schedule,
          num_steps=num_steps,
          eta=eta,
          key=sampler_key if stochastic else None,
      )

    vertices = jax.vmap(sample_one)(x_T, sampler_keys)  # (K, B, N, 3); cond is closed over, shared
  else:
    one_pass = denoise_fn(jnp.zeros_like(x_T[0]), jnp.zeros((batch,), jnp.int32))
    vertices = jnp.broadcast_to(one_pass[None], x_T.shape)
  vertices = jnp.swapaxes(vertices, 0, 1)  # (B, K, N, 3)
  mean = vertices.mean(axis=1)
  std = jnp.sqrt(jnp.mean(jnp.var(vertices, axis=1), axis=-1))
  return {
      "vertices": vertices,
      "camera": jnp.broadcast_to(camera[:, None], (batch, num_hypotheses, 3)),
      "vertices_mean": mean,
      "vertices_std": std,
  }


def make_reconstruct_fn(
    model: DiffHand,
    *,
    num_steps: int = 10,
    num_hypotheses: int = 1,
    eta: float = 0.0,
    schedule: diffusion.Schedule | None = None,
):
  """A jitted `fn(params, images, key, depth=None, noise=None, batch_stats=None) -> dict` with the
  static settings bound."""
  return jax.jit(
      functools.partial(
          reconstruct,
          model,
          num_steps=num_steps,
          num_hypotheses=num_hypotheses,
          eta=eta,
          schedule=schedule,
      )
  )
