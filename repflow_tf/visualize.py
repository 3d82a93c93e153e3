"""Flow fields as colour images: hue is the direction, brightness the magnitude."""

from __future__ import annotations

import math

import tensorflow as tf


def flow_to_rgb(flow_x, flow_y, max_magnitude: float | None = None) -> tf.Tensor:
    """Colour-codes a flow field as uint8 RGB (..., 3).

    Hue follows the direction (0° = +x, i.e. rightwards), value is the magnitude divided by
    `max_magnitude` (default: the largest magnitude in the input), saturation is 1.

    >>> rgb = flow_to_rgb(tf.ones((4, 4)), tf.zeros((4, 4)))
    >>> rgb.dtype.name, tuple(rgb[0, 0].numpy())
    ('uint8', (255, 0, 0))
    """
    flow_x = tf.cast(flow_x, tf.float32)
    flow_y = tf.cast(flow_y, tf.float32)
    magnitude = tf.sqrt(flow_x * flow_x + flow_y * flow_y)
    if max_magnitude is None:
        max_magnitude = tf.reduce_max(magnitude)
    scale = tf.maximum(tf.cast(max_magnitude, tf.float32), 1e-12)
    hue = tf.math.floormod(tf.atan2(flow_y, flow_x) / (2.0 * math.pi), 1.0)
    value = tf.clip_by_value(magnitude / scale, 0.0, 1.0)
    hsv = tf.stack([hue, tf.ones_like(hue), value], axis=-1)
    return tf.cast(tf.round(tf.image.hsv_to_rgb(hsv) * 255.0), tf.uint8)


def flow_channels_to_images(flow, max_channels: int = 4) -> tf.Tensor:
    """Turns a flow layer's output (time, H, W, 2C) into colour images, one row per channel.

    Returns uint8 (min(C, max_channels), H, time * W, 3): each row shows one channel's flow over
    time, all rows sharing one magnitude scale so that they can be compared.
    """
    flow = tf.convert_to_tensor(flow)
    channels = flow.shape[-1] // 2
    shown = min(channels, max_channels)
    flow_x = tf.transpose(flow[..., :shown], (3, 1, 0, 2))  # (shown, H, time, W)
    flow_y = tf.transpose(flow[..., channels : channels + shown], (3, 1, 0, 2))
    shape = tf.shape(flow_x)
    flow_x = tf.reshape(flow_x, (shape[0], shape[1], shape[2] * shape[3]))
    flow_y = tf.reshape(flow_y, (shape[0], shape[1], shape[2] * shape[3]))
    return flow_to_rgb(flow_x, flow_y)
