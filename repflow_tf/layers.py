"""Keras layers: the representation flow layer and the paper's in-network flow block."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import ops, options

# Option names, defined in repflow_tf.options.
LEARNABLE_GROUPS = options.LEARNABLE_GROUPS
FLOW_STACKS = options.FLOW_STACKS
# Learned θ, λ, τ are kept within [1e-4, 1e4]: exp(log θ) of an unbounded log underflows to 0
# (τ/θ = inf, NaN flow) or overflows to inf after one large optimizer step.
_LOG_HYPER_RANGE = (float(np.log(1e-4)), float(np.log(1e4)))
_PACKAGE = "repflow_tf"


def _validate_hyperparameter(name: str, value) -> float:
    low, high = np.exp(_LOG_HYPER_RANGE)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not low <= value <= high
    ):
        raise ValueError(
            f"`{name}` must be a positive number in [{low:.0e}, {high:.0e}]. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _validate_jit_compile(jit_compile) -> bool | str:
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(
            f"`jit_compile` must be True, False or 'auto'. Received: jit_compile={jit_compile!r}"
        )
    return jit_compile


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClipByValue(keras.constraints.Constraint):
    """Clips every entry of a weight to `[min_value, max_value]` (after each optimizer step).

    RepresentationFlow keeps log θ, log λ, log τ within the logarithms of [1e-4, 1e4] with it.

    >>> constraint = ClipByValue(-1.0, 1.0)
    >>> constraint(tf.constant([-3.0, 0.5, 2.0])).numpy().tolist()
    [-1.0, 0.5, 1.0]
    >>> ClipByValue.from_config(constraint.get_config()).get_config()
    {'min_value': -1.0, 'max_value': 1.0}
    """

    def __init__(self, min_value: float, max_value: float):
        if not min_value <= max_value:
            raise ValueError(
                "`min_value` must not exceed `max_value`. "
                f"Received: min_value={min_value!r}, max_value={max_value!r}"
            )
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return tf.clip_by_value(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def normalize_per_channel(clips: tf.Tensor) -> tf.Tensor:
    """Rescales each example's channel to [0, 255] over (time, height, width); constant gives 0.

    >>> x = tf.random.uniform((2, 3, 4, 4, 5))
    >>> y = normalize_per_channel(x)
    >>> float(tf.reduce_max(y)), float(tf.reduce_min(y))
    (255.0, 0.0)
    """
    low = tf.reduce_min(clips, axis=(1, 2, 3), keepdims=True)
    span = tf.reduce_max(clips, axis=(1, 2, 3), keepdims=True) - low
    # A safe denominator keeps the gradient finite for constant channels, not just the value.
    safe_span = tf.where(span > 0, span, tf.ones_like(span))
    # Divide first: (max - low) / span is exactly 1, so the range is exactly [0, 255]
    # (multiplying by a rounded 255 / span can land on 255.00002).
    return tf.where(span > 0, (clips - low) / safe_span * 255.0, tf.zeros_like(clips))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RepresentationFlow(keras.layers.Layer):
    """Learnable TV-L1 flow of every channel between consecutive frames (the paper's Algorithm 1).

    Input `(batch, time, height, width, channels)`, output `(batch, time - 1, height, width,
    2 * channels)`: the x flows of all channels, then the y flows. The flow is computed in float32
    whatever the dtype policy (|∇F|² of 0..255 data overflows float16) and cast to the compute
    dtype. θ, λ, τ are stored as logarithms so they stay positive while learned (and within
    [1e-4, 1e4], so a large optimizer step cannot make them 0 or inf).

    Args:
        num_iter: number of TV-L1 iterations (static while loops; the graph does not grow with it).
        gradient: image-gradient kernel, `"sobel"` (Sobel / 8) or `"central"` ([-0.5, 0, 0.5]).
        learn: learnable groups, a subset of `("sobel", "divergence", "hyper")` (paper Table 2);
            the other groups are non-trainable weights.
        theta, lambda_, tau: initial θ, λ, τ.
        normalize: rescale each example's channels to [0, 255] before computing the flow.
        jit_compile: how the iteration and its hand-written gradient run. `"auto"` (default):
            the fastest where the layer runs: on a machine without a GPU the fused CPU kernels
            of `repflow_tf.native` (compiled on first use; where they cannot be built, XLA), with
            a GPU XLA-compiled functions. True: XLA-compiled functions. False: no XLA: the fused
            CPU kernels where they are used by default, else plain graph functions (no
            must-compile function). Inside a model compiled with `jit_compile=True` it is XLA
            in every case, and exports always trace plain TensorFlow ops (`ops.portable_graph`).

    Gradients are computed by hand (see `ops.tvl1_iterate`) for the inputs and for the weight
    groups that are trainable when the layer is called; frozen groups cost nothing (and get
    zero gradients).

    Example:

    >>> layer = RepresentationFlow(num_iter=5)
    >>> layer(tf.random.uniform((2, 4, 16, 16, 3)) * 255).shape
    TensorShape([2, 3, 16, 16, 6])
    """

    def __init__(
        self,
        num_iter: int = 20,
        gradient: str = "sobel",
        learn: Iterable[str] = ("divergence", "hyper"),
        theta: float = 0.3,
        lambda_: float = 0.15,
        tau: float = 0.25,
        normalize: bool = True,
        jit_compile: bool | str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        ops.validate_num_iter(num_iter)
        self.num_iter = int(num_iter)
        self.gradient = options.validate_gradient(gradient)
        self.learn = options.validate_learn(learn)
        self.theta = _validate_hyperparameter("theta", theta)
        self.lambda_ = _validate_hyperparameter("lambda_", lambda_)
        self.tau = _validate_hyperparameter("tau", tau)
        self.normalize = bool(normalize)
        self.jit_compile = _validate_jit_compile(jit_compile)

    @property
    def input_dtype(self):
        # Floating-point inputs reach `call` as float32 whatever the policy and `autocast` (not
        # rounded to a float16 compute dtype first); integer inputs are left to `call` to refuse.
        return "float32"

    def _check_input_shape(self, input_shape) -> None:
        if len(input_shape) != 5:
            raise ValueError(
                f"{type(self).__name__} expects inputs of rank 5 (batch, time, height, width, "
                f"channels). Received: inputs.shape={tuple(input_shape)}"
            )
        if input_shape[1] is not None and input_shape[1] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 frames (time >= 2). "
                f"Received: inputs.shape={tuple(input_shape)}"
            )
        if input_shape[-1] is None:
            raise ValueError(
                f"The channel dimension of the inputs must be known. "
                f"Received: inputs.shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        channels = int(input_shape[-1])
        # A layer built for C channels refuses others (its kernels are per channel).
        self.input_spec = keras.InputSpec(ndim=5, axes={-1: channels})

        def constant_weight(name, value, group, constraint=None):
            value = np.asarray(value, dtype="float32")
            return self.add_weight(
                name=name,
                shape=value.shape,
                initializer=keras.initializers.Constant(value),
                trainable=group in self.learn,
                # Read in float32 whatever the dtype policy: the whole iteration runs in float32.
                autocast=False,
                constraint=constraint,
            )

        clip_log = ClipByValue(*_LOG_HYPER_RANGE)  # applied by Keras optimizers after each step
        image_x, image_y = ops.image_gradient_kernels(self.gradient, channels)
        diff_x, diff_y = ops.difference_kernels(channels)
        self.image_gradient_x = constant_weight("image_gradient_x", image_x, "sobel")
        self.image_gradient_y = constant_weight("image_gradient_y", image_y, "sobel")
        self.forward_difference_x = constant_weight("forward_difference_x", diff_x, "divergence")
        self.forward_difference_y = constant_weight("forward_difference_y", diff_y, "divergence")
        self.divergence_x = constant_weight("divergence_x", diff_x, "divergence")
        self.divergence_y = constant_weight("divergence_y", diff_y, "divergence")
        self.log_theta = constant_weight("log_theta", np.log(self.theta), "hyper", clip_log)
        self.log_lambda = constant_weight("log_lambda", np.log(self.lambda_), "hyper", clip_log)
        self.log_tau = constant_weight("log_tau", np.log(self.tau), "hyper", clip_log)

    def hyperparameters(self) -> dict[str, tf.Tensor]:
        """The current θ, λ, τ (derived from their logarithms, so gradients reach them)."""

        def positive(log_value):  # clipped again in case the variable was assigned directly
            return tf.exp(tf.clip_by_value(log_value, *_LOG_HYPER_RANGE))

        return {
            "theta": positive(self.log_theta.value),
            "lambda": positive(self.log_lambda.value),
            "tau": positive(self.log_tau.value),
        }

    def _trainable_groups(self) -> tuple[str, ...]:
        """The groups whose gradients the backward computes: trainable ones, read at call time."""
        if not self.trainable:
            return ()
        first_weight = {
            "sobel": self.image_gradient_x,
            "divergence": self.forward_difference_x,
            "hyper": self.log_theta,
        }
        return tuple(group for group in LEARNABLE_GROUPS if first_weight[group].trainable)

    def call(self, inputs):
        if not inputs.dtype.is_floating:
            raise ValueError(
                f"{type(self).__name__} expects floating-point inputs. "
                f"Received: inputs.dtype={inputs.dtype.name}"
            )
        clips = tf.cast(inputs, tf.float32)
        if self.normalize:
            clips = normalize_per_channel(clips)
        shape = tf.shape(clips)
        pairs = shape[0] * (shape[1] - 1)
        frame_shape = tf.stack([pairs, shape[2], shape[3], shape[4]])
        first = tf.reshape(clips[:, :-1], frame_shape)
        second = tf.reshape(clips[:, 1:], frame_shape)
        hyper = self.hyperparameters()
        flow_x, flow_y = ops.tvl1_iterate(
            first,
            second,
            image_kernels=(self.image_gradient_x.value, self.image_gradient_y.value),
            difference_kernels=(self.forward_difference_x.value, self.forward_difference_y.value),
            divergence_kernels=(self.divergence_x.value, self.divergence_y.value),
            theta=hyper["theta"],
            lambda_=hyper["lambda"],
            tau=hyper["tau"],
            num_iter=self.num_iter,
            learn=self._trainable_groups(),
            jit_compile=self.jit_compile is not False,
            native=False if self.jit_compile is True else None,
        )
        out_shape = tf.concat([shape[:1], shape[1:2] - 1, shape[2:]], axis=0)
        flow = tf.concat([tf.reshape(flow_x, out_shape), tf.reshape(flow_y, out_shape)], axis=-1)
        return tf.cast(flow, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        batch, time, height, width, channels = input_shape
        return (batch, None if time is None else time - 1, height, width, 2 * channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_iter": self.num_iter,
                "gradient": self.gradient,
                "learn": list(self.learn),
                "theta": self.theta,
                "lambda_": self.lambda_,
                "tau": self.tau,
                "normalize": self.normalize,
                "jit_compile": self.jit_compile,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FlowBlock(keras.layers.Layer):
    """The paper's in-network flow block: reduce -> normalise -> flow -> conv -> BN -> residual.

    A 1x1 conv reduces C channels to `channels_reduced` (C'), the representation flow layer turns
    them into 2C' flow channels, a 3x3 conv maps them back to C, batch norm follows, and the
    result is added to the input and passed through a ReLU. Alignment: the flow from frame t-1 to
    t is added to frame t, i.e. the residual is `inputs[:, 1:]`, so the output has `time - 1`
    frames.

    Args:
        channels_reduced: channels C' the flow is computed on (the paper uses 32).
        num_iter, gradient, learn, theta, lambda_, tau, jit_compile: passed to
            `RepresentationFlow`.
        synchronized_bn: use `BatchNormalization(synchronized=True)` (for distributed training).
        zero_init_residual: start the batch norm's scale at 0, so the block starts as the
            identity (as ResNets often do for their residual branches). Off by default: then
            every parameter before the scale has a zero gradient until the scale has grown, and
            on the synthetic demo that held learned flow after block 1 near chance for 3 epochs
            on the easy data and for 12 epochs or more on the hard variant, where a scale
            starting at 1 (BatchNormalization's default, as in the paper's code) learned at once.

    Example:

    >>> block = FlowBlock(channels_reduced=4, num_iter=3)
    >>> block(tf.random.uniform((2, 5, 8, 8, 16))).shape
    TensorShape([2, 4, 8, 8, 16])
    """

    def __init__(
        self,
        channels_reduced: int = 32,
        num_iter: int = 20,
        gradient: str = "sobel",
        learn: Iterable[str] = ("divergence", "hyper"),
        theta: float = 0.3,
        lambda_: float = 0.15,
        tau: float = 0.25,
        synchronized_bn: bool = False,
        jit_compile: bool | str = "auto",
        zero_init_residual: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(channels_reduced, bool)
            or not isinstance(channels_reduced, (int, np.integer))
            or channels_reduced < 1
        ):
            raise ValueError(
                "`channels_reduced` must be a positive integer. "
                f"Received: channels_reduced={channels_reduced!r}"
            )
        self.channels_reduced = int(channels_reduced)
        self.synchronized_bn = bool(synchronized_bn)
        self.zero_init_residual = bool(zero_init_residual)
        self.flow = RepresentationFlow(
            num_iter=num_iter,
            gradient=gradient,
            learn=learn,
            theta=theta,
            lambda_=lambda_,
            tau=tau,
            normalize=True,
            jit_compile=jit_compile,
            dtype=self.dtype_policy,
            name="representation_flow",
        )
        self.reduce = keras.layers.Conv3D(
            self.channels_reduced, (1, 1, 1), use_bias=False, dtype=self.dtype_policy, name="reduce"
        )

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(
                f"FlowBlock expects inputs of rank 5 (batch, time, height, width, channels). "
                f"Received: inputs.shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs must be known. "
                f"Received: inputs.shape={tuple(input_shape)}"
            )
        self.input_spec = keras.InputSpec(ndim=5, axes={-1: channels})
        self.reduce.build(input_shape)
        reduced_shape = self.reduce.compute_output_shape(input_shape)
        self.flow.build(reduced_shape)
        flow_shape = self.flow.compute_output_shape(reduced_shape)
        # Created here, not in __init__: the conv's filters are the input's channel count. (The
        # norm stays with it: creating it first would reorder the block's weights, which
        # get_weights and the optimizer variables saved in a .keras file depend on.)
        self.expand, self.norm = frame_conv_bn(
            channels,
            conv_name="expand",
            norm_name="norm",
            synchronized_bn=self.synchronized_bn,
            dtype=self.dtype_policy,
            gamma_initializer="zeros" if self.zero_init_residual else "ones",
        )
        self.expand.build(flow_shape)
        self.norm.build(self.expand.compute_output_shape(flow_shape))

    def call(self, inputs, training=None):
        flow = self.flow(self.reduce(inputs))
        residual = self.norm(self.expand(flow), training=training)
        return tf.nn.relu(inputs[:, 1:] + residual)

    def compute_output_shape(self, input_shape):
        batch, time, height, width, channels = input_shape
        return (batch, None if time is None else time - 1, height, width, channels)

    def get_config(self):
        config = super().get_config()
        flow_config = self.flow.get_config()
        config.update(
            {
                "channels_reduced": self.channels_reduced,
                "synchronized_bn": self.synchronized_bn,
                "zero_init_residual": self.zero_init_residual,
                **{
                    key: flow_config[key]
                    for key in (
                        "num_iter",
                        "gradient",
                        "learn",
                        "theta",
                        "lambda_",
                        "tau",
                        "jit_compile",
                    )
                },
            }
        )
        return config


def flow_stack(
    kind: str = "single",
    *,
    channels_reduced: int = 32,
    synchronized_bn: bool = False,
    name: str | None = None,
    **flow_kwargs,
) -> keras.Sequential:
    """One or two flow blocks: `"single"`, flow-of-flow `"fof"`, or flow-conv-flow `"fcf"`.

    `"fof"` stacks two `FlowBlock`s directly; `"fcf"` puts a 3x3 conv + BN + ReLU between them
    (the paper's best variant, Table 5). Each block shortens time by one frame.

    >>> stack = flow_stack("fcf", channels_reduced=4, num_iter=3)
    >>> stack(tf.random.uniform((2, 5, 8, 8, 16))).shape
    TensorShape([2, 3, 8, 8, 16])
    """
    if kind not in FLOW_STACKS:
        raise ValueError(f"`kind` must be one of {FLOW_STACKS}. Received: kind={kind!r}")

    def block(index):
        return FlowBlock(
            channels_reduced=channels_reduced,
            synchronized_bn=synchronized_bn,
            name=f"flow_block_{index}",
            **flow_kwargs,
        )

    layers = [block(1)]
    if kind != "single":
        if kind == "fcf":
            layers.append(ConvBNReLU(synchronized_bn=synchronized_bn, name="flow_conv"))
        layers.append(block(2))
    return keras.Sequential(layers, name=name or f"flow_stack_{kind}")


def frame_conv_bn(
    filters: int,
    *,
    conv_name: str,
    norm_name: str,
    synchronized_bn: bool = False,
    dtype=None,
    **norm_kwargs,
) -> tuple[keras.layers.Conv3D, keras.layers.BatchNormalization]:
    """A per-frame 3x3 conv (Conv3D (1, 3, 3), "same" padding, no bias) and a batch norm.

    The layers are returned unbuilt, under the given names (they name the weights); the norm
    takes `synchronized_bn` and the `norm_kwargs`; both take `dtype`. Used by FlowBlock (its
    expand conv), ConvBNReLU and the backbone's conv between two flow layers on the input.

    >>> conv, norm = frame_conv_bn(8, conv_name="conv", norm_name="norm")
    >>> norm(conv(tf.zeros((1, 2, 5, 5, 3)))).shape
    TensorShape([1, 2, 5, 5, 8])
    """
    conv = keras.layers.Conv3D(
        filters, (1, 3, 3), padding="same", use_bias=False, dtype=dtype, name=conv_name
    )
    norm = keras.layers.BatchNormalization(
        synchronized=synchronized_bn, dtype=dtype, name=norm_name, **norm_kwargs
    )
    return conv, norm


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNReLU(keras.layers.Layer):
    """3x3 per-frame conv keeping the channel count, batch norm, ReLU (the "c" of FcF).

    >>> ConvBNReLU()(tf.zeros((1, 2, 5, 5, 3))).shape
    TensorShape([1, 2, 5, 5, 3])
    """

    def __init__(self, synchronized_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.synchronized_bn = bool(synchronized_bn)

    def build(self, input_shape):
        # Created here, not in __init__: the conv's filters are the input's channel count.
        self.conv, self.norm = frame_conv_bn(
            input_shape[-1],
            conv_name="conv",
            norm_name="norm",
            synchronized_bn=self.synchronized_bn,
            dtype=self.dtype_policy,
        )
        self.conv.build(input_shape)
        self.norm.build(input_shape)

    def call(self, inputs, training=None):
        return tf.nn.relu(self.norm(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "synchronized_bn": self.synchronized_bn}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class _ConvBNReLU(ConvBNReLU):
    """ConvBNReLU under its former name, for .keras files saved before it was renamed.

    Such files name the layer `repflow_tf>_ConvBNReLU` and store its weights under the
    snake-cased class name (`__conv_bn_re_lu`), so they load into this subclass.
    """
