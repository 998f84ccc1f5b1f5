"""The geometry layer: MANO (mano/: loading, the forward layer, poses, fitting), rigid alignment, hand
conventions, MANO's topology, hypothesis aggregation, the procedural hand, rendering and safe pickle
loading. It imports nothing of the project outside this folder; diffhand_jax/mano.py and
diffhand_jax/metrics.py, its public faces, import from it."""
