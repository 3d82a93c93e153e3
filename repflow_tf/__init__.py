"""repflow_tf: Representation Flow for Action Recognition in TensorFlow / Keras 3."""

from repflow_tf.startup import prefer_onednn

__version__ = "0.1.0"

# Before any submodule imports TensorFlow (see `startup`): the oneDNN CPU kernels.
prefer_onednn()
