"""The numerics: models and their split at the cut, BN surgery, moments, image decoding, the training loop and
optimizer, distribution across devices and workers, feature extraction and transfer.
"""
