"""The synthetic_hands TFDS builder (the `tfds new` layout): see synthetic_hands_dataset_builder.py."""
