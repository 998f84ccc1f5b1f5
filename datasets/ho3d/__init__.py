"""The ho3d dataset (TFDS manual-download builder): see ho3d_dataset_builder.py."""
