"""The geometry layer: hand conventions, MANO's topology, hypothesis aggregation, the procedural hand,
rendering and safe pickle loading. It imports nothing of the project outside this layer."""
