"""The ho3d TFDS builder (the `tfds new` layout): see ho3d_dataset_builder.py."""
