"""The freihand dataset (TFDS manual-download builder): see freihand_dataset_builder.py."""
