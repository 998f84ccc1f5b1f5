"""The run-directory layer: a run's config, its checkpoints and the files in its workdir."""
