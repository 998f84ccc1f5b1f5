"""TFDS dataset builders, one folder each (the `tfds new` layout); `tfds build datasets/<name>` finds them
through the thin files in the repository's datasets/ folder."""
