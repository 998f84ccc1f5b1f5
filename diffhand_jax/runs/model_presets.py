"""Model configs (the `model` sub-dict of a training config): `get_model_config(preset)`.

  from diffhand_jax.runs import model_presets
  config.model = model_presets.get_model_config('paper')

Presets:
  tiny      For unit tests: a 2-layer, 32-wide ViT on 64x64 images (16 patches) and a 32-wide decoder
            with one cross-modality block. Compiles in seconds on a CPU.
  cpu_demo  For the synthetic CPU demo: 64x64 images, a 4-layer, 128-wide ViT with 8x8 patches
            (64 patches) and a 64-wide decoder with 2 cross-modality blocks: 1.54 M params,
            0.12 GFLOPs per encoder pass and 0.25 GFLOPs per decoder pass.
  paper     DeiT III Large (timm `deit3_large_patch16_224`) at 224 and the full decoder: 3 cross-modality
            blocks of width D = 256 with 8 heads (head dim 32) and MLP ratio 4. The paper gives neither D
            nor the heads. The decoder runs once per DDIM step (10 per image), and its cost is dominated
            by the full-resolution (778-point) feature blocks, which grow with D²: at D = 256 ten decoder
            passes cost about half an encoder pass; at D = 512 they would cost about twice the encoder.

Fields:
  encoder, encoder_overrides   timm model name for models/vit.py `create` (or an HRNet's, 'hrnet_w64',
                               for models/hrnet.py), and the ViT fields it overrides
  img_size                     input side in pixels (224 FreiHAND, 256 HO-3D / DexYCB)
  encoder_init                 pretrained encoder weights: a Hugging Face Hub id ('timm/<name>.<tag>',
                               fetched into the HF cache), a timm/HF checkpoint file (.safetensors,
                               .pth, .bin), a file from `python -m diffhand_jax.convert_checkpoint`,
                               or None / '' = random init. Read once, outside jit, by a fresh training
                               run only (models/pretrained.py, the one home of pretrained weights)
  decoder                      'cross_modality' | 'vanilla' (the ablation's plain self-attention)
  feature_block                'channel_attention' (XCiT) | 'mlp' | 'none'
  full_res_attention           also an attention block at full resolution in each vertex block
  upsample_init                'interpolation' (the U shape's point-axis maps start as inverse-distance
                               interpolation on the template) | 'random'
  diffusion                    False = the one-pass regression variant (ablation)
  width, num_blocks, num_heads, mlp_ratio   decoder width D, cross-modality blocks, heads, MLP ratio
  vanilla_depth                layers of the vanilla decoder (None = 2 · num_blocks, as many attention
                               blocks as the cross-modality decoder's U shapes hold)
  vertex_scale                 model space = root-relative metres / vertex_scale (docs/design.md §2)
  num_vertices, fps_sizes      N and the U shape's level sizes (778 → 195 → 49)
  use_depth, depth_channels    the depth block (docs/design.md §4) and its inner conv widths
  regression_timestep          the fixed t of the diffusion=False variant
  num_timesteps                T of the training schedule
  sampling_steps, num_hypotheses, eta   DDIM inference defaults
  dtype                        compute dtype: 'float32' | 'bfloat16' (params stay float32)
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "cpu_demo", "paper")
# The encoder fields a config may override without a preset of its own (models/vit.py `create`).
VIT_OVERRIDES = ("embed_dim", "depth", "num_heads", "patch_size")

# The pretrained weights of the paper configs (freihand, ho3d, dexycb): timm's DeiT III Large at 224,
# pretrained on ImageNet-22k and fine-tuned on ImageNet-1k. The paper names DeiT III ("Deit-Large",
# Touvron et al. 2022) without a tag; of timm's DeiT III Large weights this is the strongest at 224
# (ImageNet-1k top-1 87.0% in the DeiT III paper, against 84.9% for the ImageNet-1k-only `fb_in1k`), and
# its 224 input is FreiHAND's. At 256 (HO-3D, DexYCB) the position embedding is resampled, as timm does.
PAPER_ENCODER = "deit3_large_patch16_224"
PAPER_ENCODER_INIT = "timm/deit3_large_patch16_224.fb_in22k_ft_in1k"

# The paper's DexYCB encoder: HRNet-W64 (Li et al. 2023, Table 2), from timm's ImageNet-1k weights (the
# one pretrained HRNet-W64 timm has, converted from the HRNet authors' release; 79.5% top-1).
PAPER_HRNET_ENCODER = "hrnet_w64"
PAPER_HRNET_INIT = "timm/hrnet_w64.ms_in1k"


def unset_encoder_overrides() -> ml_collections.ConfigDict:
  """`encoder_overrides` that override nothing: an int placeholder (None) per field of VIT_OVERRIDES, so
  that each stays settable on the command line (a plain None field is not)."""
  return ml_collections.ConfigDict(
      {name: ml_collections.config_dict.placeholder(int) for name in VIT_OVERRIDES}
  )


def set_encoder(model_config: ml_collections.ConfigDict, encoder: str) -> None:
  """Puts ``encoder`` (a timm name) in ``model_config`` with its overrides unset: the named model's own
  architecture, whatever the config's previous encoder was shrunk to."""
  model_config.encoder = encoder
  model_config.encoder_overrides = unset_encoder_overrides()


def _base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.encoder = PAPER_ENCODER
  # None keeps the timm model's own value; set on the command line to shrink the encoder
  # (--config.model.encoder_overrides.depth=2).
  config.encoder_overrides = unset_encoder_overrides()
  config.img_size = 224
  config.encoder_init = ml_collections.config_dict.placeholder(str)
  config.decoder = "cross_modality"
  config.feature_block = "channel_attention"
  config.full_res_attention = False
  config.upsample_init = "interpolation"
  config.diffusion = True
  config.width = 256
  config.num_blocks = 3
  config.num_heads = 8
  config.mlp_ratio = 4.0
  config.vanilla_depth = ml_collections.config_dict.placeholder(int)
  config.vertex_scale = 0.1
  config.num_vertices = 778
  config.fps_sizes = (195, 49)
  config.use_depth = False
  config.depth_channels = (32, 64, 128)
  # A linear head on I_E predicting the global orientation, for config.loss.lambda_orientation (not the
  # paper's; the CPU demo uses it, docs/experiments.md "Learning which side faces the camera").
  config.orientation_head = False
  config.regression_timestep = 0
  config.num_timesteps = 1000
  config.sampling_steps = 10
  config.num_hypotheses = 1
  config.eta = 0.0
  config.dtype = "float32"
  return config


def get_model_config(preset: str = "paper") -> ml_collections.ConfigDict:
  """The model config of a preset: 'tiny', 'cpu_demo' or 'paper'."""
  config = _base()
  if preset == "paper":
    return config
  if preset == "tiny":
    config.encoder = "deit_tiny_patch16_224"
    config.encoder_overrides = ml_collections.ConfigDict(
        dict(embed_dim=32, depth=2, num_heads=2, patch_size=16)
    )
    config.img_size = 64
    config.width = 32
    config.num_blocks = 1
    config.num_heads = 2
    config.mlp_ratio = 2.0
    config.depth_channels = (8, 8, 16)
    return config
  if preset == "cpu_demo":
    config.encoder = "deit_small_patch16_224"
    config.encoder_overrides = ml_collections.ConfigDict(
        dict(embed_dim=128, depth=4, num_heads=4, patch_size=8)
    )
    config.img_size = 64
    config.width = 64
    config.num_blocks = 2
    config.num_heads = 4
    config.mlp_ratio = 2.0
    config.depth_channels = (16, 32, 64)
    return config
  raise ValueError(
      f"diffhand_jax/runs/model_presets.py: unknown preset {preset!r}; choose one of {PRESETS}."
  )


def get_config(preset: str = "paper") -> ml_collections.ConfigDict:
  """Alias so that `--config=diffhand_jax/runs/model_presets.py:tiny` also works."""
  return get_model_config(preset)
