"""The inference layer: opening a trained run, sampling it, crops, test-time augmentation, predictions for
a folder of images, benchmark submission files, and the flag parsing and config overrides of the commands
over them."""
