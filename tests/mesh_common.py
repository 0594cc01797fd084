"""The model and data of the mesh checks (imported by subprocesses after they set XLA_FLAGS)."""

import numpy as np

from mijax import data
from mijax.models import digits_cnn

MODEL = digits_cnn(image_size=16)


def digits(n=256):
    train = data.load("digits", "train")
    return np.clip(np.asarray(data.resize(train.images[:n], (16, 16))), 0, 1), train.labels[:n]
