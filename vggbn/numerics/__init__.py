"""The numerics: models and their split at the cut, BN surgery, moments, image decoding, the training loop and
optimizer, feature extraction and transfer.
"""
