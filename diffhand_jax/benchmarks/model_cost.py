"""Parameter count and FLOPs per sample of the DiffHand model presets (XLA cost analysis).

  python -m diffhand_jax.bench model_cost [--presets=paper,cpu_demo] [--batch=1] [--output=...]
      [--encoder=hrnet_w64 --img_size=256]

For each preset (diffhand_jax/runs/model_presets.py) it reports the parameters of the encoder, the decoder (with the
camera head) and the whole model, and the FLOPs that XLA's cost analysis counts for one encoder pass
(`DiffHand.encode`) and for one decoder pass (`DiffHand.denoise`), divided by the batch size. Inference with
S DDIM steps costs one encoder pass plus S decoder passes (the image is encoded once); the table shows that
sum for the preset's `sampling_steps`. Nothing is materialised: the functions are lowered on shapes only.
XLA counts a multiply-add as 2 FLOPs.
"""

from __future__ import annotations

from typing import Any

from absl import flags
import jax
import jax.numpy as jnp

from diffhand_jax.benchmarks import common
from diffhand_jax import command_line
from diffhand_jax.models import diffhand


def _flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX returns one dict per device program
    analysis = analysis[0]
  return float(analysis["flops"])


def measure(
    preset: str, batch: int = 1, encoder: str | None = None, img_size: int | None = None
) -> dict[str, Any]:
  config = common.model_config(preset, encoder, img_size)
  model = diffhand.build_model(config)
  size = config.img_size
  shapes = diffhand.variable_shapes(model, size, batch)
  params, batch_stats = shapes["params"], shapes["batch_stats"]
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  depth = jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32) if model.use_depth else None
  variables = lambda p: diffhand.model_variables(p, batch_stats)  # HRNet's running statistics
  encode = lambda p, x, d: model.apply(variables(p), x, d, method=diffhand.DiffHand.encode)
  cond = jax.eval_shape(encode, params, images, depth)
  x_t = jax.ShapeDtypeStruct((batch, model.num_vertices, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  denoise = lambda p, c, x, s: model.apply(variables(p), c, x, s, method=diffhand.DiffHand.denoise)

  encoder_flops = _flops(encode, params, images, depth) / batch
  decoder_flops = _flops(denoise, params, cond, x_t, t) / batch
  encoder_params = diffhand.num_params(params["encoder"])
  total_params = diffhand.num_params(params)
  steps = int(config.sampling_steps)
  return {
      "preset": preset,
      "encoder": config.encoder,
      "img_size": int(size),
      "decoder": config.decoder,
      "width": int(config.width),
      "num_blocks": int(config.num_blocks),
      "num_heads": int(config.num_heads),
      "num_patches": int(cond.features.shape[1]),
      "params_encoder": encoder_params,
      "params_decoder": total_params - encoder_params,
      "params_total": total_params,
      "flops_encoder_per_sample": encoder_flops,
      "flops_decoder_per_sample": decoder_flops,
      "sampling_steps": steps,
      "flops_inference_per_sample": encoder_flops + steps * decoder_flops,
      "batch_used": batch,
  }


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "presets", "paper,cpu_demo", "model presets, comma-separated", flag_values=FLAGS
)
flags.DEFINE_integer("batch", 1, "batch the functions are lowered at", flag_values=FLAGS)
flags.DEFINE_string(
    "encoder", None, "another encoder than the presets' (e.g. hrnet_w64)", flag_values=FLAGS
)
flags.DEFINE_integer("img_size", None, "input size (default: each preset's)", flag_values=FLAGS)
flags.DEFINE_string("output", "bench_results/model_cost.json", "the JSON report", flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog="python -m diffhand_jax.bench model_cost", doc=__doc__)
  except command_line.Exit as done:
    return done.code

  results = [
      measure(preset, FLAGS.batch, FLAGS.encoder, FLAGS.img_size)
      for preset in FLAGS.presets.split(",")
      if preset
  ]
  millions = lambda n: n / 1e6
  giga = lambda n: n / 1e9
  rows = [
      [
          r["preset"],
          f'{r["encoder"]} @ {r["img_size"]}',
          f'{r["decoder"]} D={r["width"]} x{r["num_blocks"]} h={r["num_heads"]}',
          millions(r["params_encoder"]),
          millions(r["params_decoder"]),
          millions(r["params_total"]),
          giga(r["flops_encoder_per_sample"]),
          giga(r["flops_decoder_per_sample"]),
          giga(r["flops_inference_per_sample"]),
      ]
      for r in results
  ]
  header = [
      "preset",
      "encoder",
      "decoder",
      "encoder params (M)",
      "decoder params (M)",
      "total params (M)",
      "encoder GFLOPs/sample",
      "decoder GFLOPs/sample (one pass)",
      "inference GFLOPs/sample (1 enc + S dec)",
  ]
  common.report(
      "model_cost",
      FLAGS.output,
      "DiffHand model cost (XLA cost analysis, FLOPs per sample)",
      header,
      rows,
      results,
  )
  return 0


if __name__ == "__main__":
  import sys

  sys.exit(main(sys.argv[1:]))
