"""The data layer: the input pipeline, augmentation, the source-file readers and TFDS builders, the
synthetic scene and the dataset fixtures. It imports only the geometry layer."""
