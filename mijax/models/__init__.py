"""Model definitions; each factory returns a `mijax.split.SplitModel` cut at a named layer."""

from mijax.models.he2019 import cifar10cnn, digits_cnn, lenet

__all__ = ["cifar10cnn", "digits_cnn", "lenet"]
