"""The inference layer: opening a trained run (`load_trained`), sampling it, crops, test-time
augmentation, predictions for a folder of images, benchmark submission files, and the config overrides
of the commands over them."""

from diffhand_jax.inference.loading import TrainedRun, load_trained

__all__ = ['TrainedRun', 'load_trained']
