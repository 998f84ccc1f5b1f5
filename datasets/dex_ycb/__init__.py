"""The dex_ycb dataset (TFDS manual-download builder): see dex_ycb_dataset_builder.py."""
