"""Test-wide setup: two logical CPU devices, so MirroredStrategy runs on a CPU-only machine."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices, i.e. before any op runs.
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The test command runs two pytest-xdist workers on the two cores: each worker's ops on one
    # thread, rather than both workers' ops contending for both cores (inter-op threads stay,
    # MirroredStrategy's two replicas need them).
    tf.config.threading.set_intra_op_parallelism_threads(1)
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
