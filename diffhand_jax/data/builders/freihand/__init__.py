"""The freihand TFDS builder (the `tfds new` layout): see freihand_dataset_builder.py."""
