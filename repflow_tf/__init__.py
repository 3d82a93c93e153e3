"""repflow_tf: Representation Flow for Action Recognition in TensorFlow / Keras 3."""

__version__ = "0.1.0"
