"""The dex_ycb TFDS builder (the `tfds new` layout): see dex_ycb_dataset_builder.py."""
