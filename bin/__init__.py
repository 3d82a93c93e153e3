"""Command-line scripts; installed as the package repflow_tf.bin for the console entry points."""
