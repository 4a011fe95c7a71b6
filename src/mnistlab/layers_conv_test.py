"""The convolution, pooling, batch normalization and augmentation layers against loops in NumPy,
SciPy and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from mnistlab import layers, model
from mnistlab import spec as spec_lib
from mnistlab.spec import (
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    ElasticDistortion,
    Flatten,
    GlobalAveragePooling2D,
    MaxPooling2D,
    ModelSpec,
    RandomRotation,
    RandomStrokeWidth,
    RandomTranslation,
    RandomZoom,
)

RNG = np.random.default_rng(7)


def same_pads(n, k, s):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def numpy_conv(x, kernel, strides, padding):
    """Keras' Conv2D by its definition: sums over windows, TensorFlow's "same" padding."""
    kh, kw, _, f = kernel.shape
    if padding == "same":
        x = np.pad(x, ((0, 0), same_pads(x.shape[1], kh, strides[0]), same_pads(x.shape[2], kw, strides[1]), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // strides[0] + 1, (w - kw) // strides[1] + 1
    out = np.zeros((n, oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            window = x[:, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw, :]
            out[:, i, j, :] = np.einsum("nabc,abcf->nf", window, kernel)
    return out


def numpy_pool(x, kind, size, strides, padding):
    """Max or mean over each window; "same" windows see only the pixels they cover."""
    (ph, pw), (sh, sw) = size, strides
    n, h, w, c = x.shape
    top, left = (same_pads(h, ph, sh)[0], same_pads(w, pw, sw)[0]) if padding == "same" else (0, 0)
    oh = -(-h // sh) if padding == "same" else (h - ph) // sh + 1
    ow = -(-w // sw) if padding == "same" else (w - pw) // sw + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - top, j * sw - left
            window = x[:, max(r0, 0):r0 + ph, max(c0, 0):c0 + pw, :]
            out[:, i, j, :] = window.max(axis=(1, 2)) if kind == "max" else window.mean(axis=(1, 2))
    return out


CONV_CASES = [((3, 3), (1, 1), "valid"), ((3, 3), (1, 1), "same"), ((5, 3), (2, 2), "same"), ((2, 2), (2, 1), "valid"),
              ((4, 4), (3, 3), "same"), ((1, 2), (1, 1), "valid"), ((1, 1), (2, 2), "valid")]


@pytest.mark.parametrize("im2col, calls", [(True, 0), (False, 1), (None, 0)])  # None: the CPU's choice
def test_conv2d_takes_the_path_it_is_told_or_the_backends(monkeypatch, im2col, calls):
    seen = []
    real = jax.lax.conv_general_dilated
    monkeypatch.setattr(jax.lax, "conv_general_dilated", lambda *a, **k: seen.append(1) or real(*a, **k))
    layers.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)), (1, 1), "valid", im2col=im2col)
    assert len(seen) == calls and jax.default_backend() == "cpu"


@pytest.mark.parametrize("channels", [1, 3])  # the patch gather reads single pixels, or vectors of them
@pytest.mark.parametrize("im2col", [True, False])  # the CPU's patch product, XLA's convolution (GPUs)
@pytest.mark.parametrize("kernel_size, strides, padding", CONV_CASES)
def test_conv2d_is_keras_cross_correlation(kernel_size, strides, padding, im2col, channels):
    x = RNG.normal(size=(2, 9, 8, channels)).astype(np.float32)
    kernel = RNG.normal(size=(*kernel_size, channels, 4)).astype(np.float32)
    expected = numpy_conv(x.astype(np.float64), kernel.astype(np.float64), strides, padding)
    got = layers.conv2d(jnp.asarray(x), jnp.asarray(kernel), strides, padding, im2col=im2col)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernel_size, strides, padding", CONV_CASES)
def test_conv2d_gradients_are_xla_convolutions(kernel_size, strides, padding, channels):
    # The patch product's gradient is written by hand (tap by tap): both of its gradients
    # against autodiff of XLA's own convolution, for a random cotangent.
    x = jnp.asarray(RNG.normal(size=(2, 9, 8, channels)).astype(np.float32))
    kernel = jnp.asarray(RNG.normal(size=(*kernel_size, channels, 4)).astype(np.float32))
    conv = lambda im2col: lambda x, k: layers.conv2d(x, k, strides, padding, im2col=im2col)
    out, xla_grads = jax.vjp(conv(False), x, kernel)
    cotangent = jnp.asarray(RNG.normal(size=out.shape).astype(np.float32))
    for got, expected in zip(jax.vjp(conv(True), x, kernel)[1](cotangent), xla_grads(cotangent)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("size, strides, padding", [
    ((2, 2), (2, 2), "valid"), ((2, 2), (2, 2), "same"), ((3, 3), (2, 2), "same"), ((3, 2), (1, 2), "valid")])
def test_pooling_matches_window_loops(kind, size, strides, padding):
    x = RNG.normal(size=(2, 7, 9, 3)).astype(np.float32)
    got = layers.pool2d(jnp.asarray(x), kind, size, strides, padding)
    np.testing.assert_allclose(got, numpy_pool(x, kind, size, strides, padding), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(2, 2), (3, 2)])
def test_max_pooling_gradient_goes_to_the_first_maximum_of_each_window(size):
    # Keras' gradient is JAX's `reduce_window` max (Keras on JAX runs it; TensorFlow and
    # PyTorch agree): all of a window's gradient to its first maximum in row-major order.
    # Ties are the case that tells (integers in 0..2: most windows hold one), and 7 x 9
    # leaves rows and columns outside every window, which get none.
    x = jnp.asarray(RNG.integers(0, 3, size=(2, 7, 9, 3)).astype(np.float32))
    cotangent = jnp.asarray(RNG.normal(size=(2, 7 // size[0], 9 // size[1], 3)).astype(np.float32))
    keras = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, *size, 1), (1, *size, 1), "VALID")
    ours = lambda v: layers.pool2d(v, "max", size, size, "valid")
    expected = jax.vjp(keras, x)[1](cotangent)[0]
    got = jax.vjp(ours, x)[1](cotangent)[0]
    np.testing.assert_array_equal(got, expected)
    assert int((expected != 0).sum()) == cotangent.size  # one pixel a window, none outside
    # and under vmap, as populations train
    batched = jax.vmap(lambda v, g: jax.vjp(ours, v)[1](g)[0])(jnp.stack([x, x[::-1]]), jnp.stack([cotangent] * 2))
    np.testing.assert_array_equal(batched[0], expected)


def test_conv_kernels_use_keras_fans():
    # fan_in = 3*3*16, fan_out = 3*3*32: glorot_uniform's limit is sqrt(6 / (144 + 288)).
    from mnistlab.spec import Initializer
    w = Initializer(name="glorot_uniform").draw(np.random.default_rng(0), (3, 3, 16, 32))
    limit = np.sqrt(6 / (144 + 288))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    he = Initializer(name="he_normal").draw(np.random.default_rng(0), (5, 5, 8, 64))
    assert he.std() == pytest.approx(np.sqrt(2 / 200), rel=0.03)


def conv_spec():
    return ModelSpec(input_rescale=1.0, layers=[
        Conv2D(filters=3, kernel_size=3, padding="same", activation="tanh"),
        BatchNormalization(),
        MaxPooling2D(pool_size=2),
        Conv2D(filters=4, kernel_size=2, strides=2, activation="relu"),
        AveragePooling2D(pool_size=2, padding="same"),
        Flatten(),
        Dense(units=3, activation="softmax")])


def test_parameter_shapes_follow_the_layers():
    shapes = model.parameter_shapes(conv_spec(), (9, 9))
    assert shapes == {"conv2d/kernel": (3, 3, 1, 3), "conv2d/bias": (3,),
                      "batch_normalization/gamma": (3,), "batch_normalization/beta": (3,),
                      "batch_normalization/moving_mean": (3,), "batch_normalization/moving_variance": (3,),
                      "conv2d_1/kernel": (2, 2, 3, 4), "conv2d_1/bias": (4,),
                      "dense/kernel": (4, 3), "dense/bias": (3,)}  # 9 -> pool 4 -> conv 2 -> pool(same) 1
    params = model.init(conv_spec(), 0, (9, 9))
    assert (params["batch_normalization/moving_variance"] == 1).all() and (params["batch_normalization/gamma"] == 1).all()
    assert (params["batch_normalization/moving_mean"] == 0).all() and (params["batch_normalization/beta"] == 0).all()
    assert model.split_statistics(params)[1].keys() == {"batch_normalization/moving_mean",
                                                        "batch_normalization/moving_variance"}


@pytest.mark.slow
def test_conv_network_gradient_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        spec = conv_spec()
        params = {k: jnp.asarray(v, jnp.float64) for k, v in model.init(spec, 1, (9, 9)).items()}
        params["batch_normalization/moving_mean"] = jnp.array([0.1, -0.2, 0.3])
        hyper = model.hyperparameters(spec)
        x = jax.random.uniform(jax.random.PRNGKey(2), (5, 9, 9), jnp.float64)
        labels = jnp.array([0, 1, 2, 0, 1])

        def loss(p):  # training mode: batch statistics in the graph
            z, _ = model.forward(spec, p, hyper, x, key=jax.random.PRNGKey(0))
            return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(5), labels])

        grads = jax.grad(loss)(params)
        eps = 1e-6
        for name in model.split_statistics(params)[0]:
            flat = np.asarray(params[name]).ravel()
            for i in {0, flat.size // 2, flat.size - 1}:
                up, down = flat.copy(), flat.copy()
                up[i] += eps
                down[i] -= eps
                f = lambda v: float(loss({**params, name: jnp.asarray(v.reshape(params[name].shape))}))
                numeric = (f(up) - f(down)) / (2 * eps)
                assert float(np.asarray(grads[name]).ravel()[i]) == pytest.approx(numeric, rel=1e-4, abs=1e-8), name
    finally:
        jax.config.update("jax_enable_x64", False)


def test_batch_normalization_training_and_inference():
    spec = ModelSpec(input_rescale=1.0, layers=[BatchNormalization(momentum=0.9, epsilon=0.01),
                                                Dense(units=2, activation="softmax")])
    params = {"batch_normalization/gamma": jnp.array([2.0, 1.0, 0.5]), "batch_normalization/beta": jnp.array([0.0, 1.0, -1.0]),
              "batch_normalization/moving_mean": jnp.array([1.0, 2.0, 3.0]),
              "batch_normalization/moving_variance": jnp.array([4.0, 1.0, 0.25]),
              "dense/kernel": jnp.eye(3, 2), "dense/bias": jnp.zeros(2)}
    hyper = model.hyperparameters(spec)
    x = RNG.normal(size=(6, 3)).astype(np.float32) * 3 + 1
    mask = np.array([True, True, True, True, False, False])
    z, moved = model.forward(spec, params, hyper, jnp.asarray(x), key=jax.random.PRNGKey(0), mask=jnp.asarray(mask))
    real = x[mask]
    mean, var = real.mean(0), real.var(0)  # the padding rows take no part
    normed = (x - mean) / np.sqrt(var + 0.01) * [2.0, 1.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(z, normed[:, :2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(moved["batch_normalization/moving_mean"], 0.9 * np.array([1, 2, 3]) + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(moved["batch_normalization/moving_variance"],
                               0.9 * np.array([4, 1, 0.25]) + 0.1 * var, rtol=1e-5)
    z, moved = model.forward(spec, params, hyper, jnp.asarray(x))  # inference: moving statistics
    expected = (x - [1, 2, 3]) / np.sqrt(np.array([4, 1, 0.25]) + 0.01) * [2.0, 1.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(z, expected[:, :2], rtol=1e-4, atol=1e-5)
    assert moved == {}


def test_batch_normalization_of_images_takes_every_pixel_of_the_real_samples_only():
    x = RNG.normal(size=(3, 4, 5, 2)).astype(np.float32)
    norm = BatchNormalization(center=False, scale=False, epsilon=0.01)
    weights = {"moving_mean": jnp.zeros(2), "moving_variance": jnp.ones(2)}
    for real in ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0]):  # one real sample, then two; the rest is padding
        out, _ = norm.apply(jnp.asarray(x), weights, {"momentum": 0.9}, key=jax.random.PRNGKey(0),
                            weight=jnp.asarray(real))
        kept = x[np.asarray(real) > 0]
        mean, var = kept.mean(axis=(0, 1, 2)), kept.var(axis=(0, 1, 2))  # over N x H x W
        np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 0.01), rtol=1e-4, atol=1e-4)


def test_global_average_pooling_and_flatten_order():
    spec = ModelSpec(input_rescale=1.0, layers=[Conv2D(filters=2, kernel_size=1, use_bias=False),
                                                GlobalAveragePooling2D(), Dense(units=2, activation="softmax", use_bias=False)])
    x = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    params = {"conv2d/kernel": jnp.array([[[[1.0, -1.0]]]]), "dense/kernel": jnp.eye(2)}
    z = model.logits(spec, params, {}, jnp.asarray(x))
    np.testing.assert_allclose(z, np.stack([x.mean((1, 2)), -x.mean((1, 2))], 1), rtol=1e-5, atol=1e-6)
    # Flatten keeps Keras' channels-last order: feature index (row * W + column) * C + channel.
    flat = ModelSpec(input_rescale=1.0, layers=[Conv2D(filters=2, kernel_size=1, use_bias=False), Flatten(),
                                                Dense(units=40, activation="softmax", use_bias=False)])
    z = model.logits(flat, {"conv2d/kernel": jnp.array([[[[1.0, -1.0]]]]), "dense/kernel": jnp.eye(40)}, {}, jnp.asarray(x))
    np.testing.assert_allclose(z, np.stack([x, -x], -1).reshape(3, 40), rtol=1e-6)


# ------------------------------------------------------------------ augmentation


def augmented(layer, x, key):
    spec = ModelSpec(input_rescale=1.0, layers=[layer, Flatten(), Dense(units=x[0].size, activation="softmax",
                                                                        use_bias=False)])
    params = {"dense/kernel": jnp.eye(x[0].size)}
    return np.asarray(model.logits(spec, params, model.hyperparameters(spec), jnp.asarray(x), key)).reshape(x.shape)


def draws(key, n):
    """The layer's two uniform(-1, 1) draws per image, as model.augment derives them."""
    k1, k2 = jax.random.split(jax.random.split(jax.random.fold_in(key, 0), 1)[0])
    return [np.asarray(jax.random.uniform(k, (n,), jnp.float32, -1.0, 1.0)) for k in (k1, k2)]


def scipy_sample(image, rows, cols, mode="constant"):
    # Keras' "constant" interpolates with the fill value just beyond the edge: SciPy's
    # "grid-constant" (its "constant" drops every point outside outright).
    mode = "grid-constant" if mode == "constant" else mode
    return scipy.ndimage.map_coordinates(image.astype(np.float64), [rows, cols], order=1, mode=mode, cval=0.0)


def grid(h, w):
    return np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")


IMAGES = RNG.uniform(0, 1, size=(4, 12, 10)).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_sampling_with_zeros_outside_is_jax_map_coordinates_to_the_bit(channels):
    # model.augment's hand-written sampler for fill_mode "constant" against the library's
    # map_coordinates it replaces, bit for bit: coordinates inside, on whole pixels, on and
    # just beyond each border (-1.5 ... -0.5, size - 1 ... size), and far outside.
    n, h, w = 3, 12, 10
    x = RNG.uniform(-1, 1, size=(n, h, w, channels)).astype(np.float32)
    coords = RNG.uniform(-3 * h, 4 * h, size=(n, 2, h, w)).astype(np.float32)
    coords[:, :, :3] = RNG.uniform(-1, max(h, w), size=(n, 2, 3, w)).round()
    edges = [-2.0, -1.5, -1.0, -0.75, -0.5, 0.0, 0.25, 8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5]
    coords[:, :, 3:6] = RNG.choice(edges, size=(n, 2, 3, w))
    coords[:, :, 6:8] = RNG.uniform(-1.5, 1.5, size=(n, 2, 2, w)) + np.array([h - 1, w - 1]).reshape(1, 2, 1, 1)

    def library(image, where):  # (H, W, C), (2, H, W)
        per_channel = lambda plane: jax.scipy.ndimage.map_coordinates(plane, [where[0], where[1]], order=1,
                                                                         mode="constant", cval=0.0)
        return jax.vmap(per_channel, in_axes=2, out_axes=2)(image)

    expected = jax.jit(jax.vmap(library))(jnp.asarray(x), jnp.asarray(coords))
    got = jax.jit(jax.vmap(model.sample_bilinear_zero_outside))(jnp.asarray(x), jnp.asarray(coords))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert np.count_nonzero(np.asarray(got)) > x.size // 8 and np.count_nonzero(np.asarray(got) == 0) > x.size // 8


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_a_batch_in_two_interleaved_halves_is_the_batch_at_once(n):
    # model.augment's loop of two: each image meets its own coordinates and comes back in
    # its place, for odd batches too (the last image is repeated to even the halves).
    x = RNG.integers(0, 100, size=(n, 4, 3)).astype(np.float32)  # whole numbers: exact however summed
    y = RNG.integers(0, 100, size=(n, 2)).astype(np.float32)
    per_image = jax.vmap(lambda a, b: a * b[0] + b[1])
    got = jax.jit(lambda a, b: model.in_two_interleaved_halves(per_image, a, b))(x, y)
    np.testing.assert_array_equal(np.asarray(got), x * y[:, :1, None] + y[:, 1:, None])


def test_translation_reads_shifted_pixels():
    key = jax.random.PRNGKey(5)
    got = augmented(RandomTranslation(height_factor=0.2, width_factor=0.1, fill_mode="constant"), IMAGES, key)
    u, v = draws(key, 4)
    rows, cols = grid(12, 10)
    for i in range(4):
        expected = scipy_sample(IMAGES[i], rows - u[i] * 0.2 * 12, cols - v[i] * 0.1 * 10)
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_rotation_turns_about_the_centre():
    key = jax.random.PRNGKey(6)
    got = augmented(RandomRotation(factor=0.1, fill_mode="nearest"), IMAGES, key)
    u, _ = draws(key, 4)
    rows, cols = grid(12, 10)
    dy, dx = rows - 5.5, cols - 4.5
    for i in range(4):
        a = u[i] * 0.1 * 2 * np.pi
        expected = scipy_sample(IMAGES[i], np.cos(a) * dy - np.sin(a) * dx + 5.5,
                                np.sin(a) * dy + np.cos(a) * dx + 4.5, mode="nearest")
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


@pytest.mark.parametrize("width_factor", [None, 0.2])
def test_zoom_scales_about_the_centre(width_factor):
    # width_factor None (Keras' default) keeps the aspect; a number draws the width's own scale.
    key = jax.random.PRNGKey(7)
    got = augmented(RandomZoom(height_factor=0.3, width_factor=width_factor, fill_mode="reflect"), IMAGES, key)
    u, v = draws(key, 4)
    rows, cols = grid(12, 10)
    for i in range(4):
        zh = 1 + 0.3 * u[i]
        zw = zh if width_factor is None else 1 + width_factor * v[i]
        expected = scipy_sample(IMAGES[i], 5.5 + (rows - 5.5) * zh, 4.5 + (cols - 4.5) * zw, mode="reflect")
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_elastic_field_is_smoothed_uniform_noise():
    key = jax.random.PRNGKey(8)
    got = augmented(ElasticDistortion(alpha=3.0, sigma=2.0, fill_mode="constant"), IMAGES, key)
    k1, _ = jax.random.split(jax.random.split(jax.random.fold_in(key, 0), 1)[0])
    noise = np.asarray(jax.random.uniform(k1, (4, 2, 12, 10), jnp.float32, -1.0, 1.0), np.float64)
    rows, cols = grid(12, 10)
    for i in range(4):
        # SciPy's Gaussian filter with zeros beyond the border, truncated far out.
        dy, dx = (scipy.ndimage.gaussian_filter(noise[i, a], 2.0, mode="constant", truncate=12.0) for a in (0, 1))
        expected = scipy_sample(IMAGES[i], rows + 3.0 * dy, cols + 3.0 * dx)
        np.testing.assert_allclose(got[i], expected, atol=1e-4)


def test_stroke_width_blends_each_image_toward_its_cross_erosion_or_dilation():
    key = jax.random.PRNGKey(5)
    layer = RandomStrokeWidth(factor=0.8)
    got = augmented(layer, IMAGES, key)
    # The layer's draw: the step's key folded with its index (0), one uniform(-1, 1) per image.
    u = 0.8 * np.asarray(jax.random.uniform(jax.random.fold_in(key, 0), (4, 1, 1, 1), jnp.float32, -1.0, 1.0))
    cross = scipy.ndimage.generate_binary_structure(2, 1)
    assert (u > 0).any() and (u < 0).any()  # both directions are checked
    for i in range(4):
        eroded = scipy.ndimage.grey_erosion(IMAGES[i], footprint=cross, mode="constant", cval=0.0)
        dilated = scipy.ndimage.grey_dilation(IMAGES[i], footprint=cross, mode="constant", cval=0.0)
        a = float(u[i].item())
        expected = IMAGES[i] + (a * (dilated - IMAGES[i]) if a > 0 else -a * (eroded - IMAGES[i]))
        np.testing.assert_allclose(got[i], expected, atol=1e-6)
    np.testing.assert_array_equal(augmented(layer, IMAGES, None), IMAGES)


def test_augmentation_is_seeded_and_off_at_inference():
    layer = RandomRotation(factor=0.05, fill_mode="constant")
    a = augmented(layer, IMAGES, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, augmented(layer, IMAGES, jax.random.PRNGKey(1)))
    assert not np.allclose(a, augmented(layer, IMAGES, jax.random.PRNGKey(2)))
    np.testing.assert_allclose(augmented(layer, IMAGES, None), IMAGES, rtol=1e-6)


def test_consecutive_augmentations_compose_into_one_resampling():
    spec = ModelSpec(input_rescale=1.0, layers=[
        RandomTranslation(height_factor=0.0, width_factor=0.0, fill_mode="constant"),
        RandomZoom(height_factor=0.0, fill_mode="constant"), Flatten(),
        Dense(units=120, activation="softmax", use_bias=False)])
    # Zero factors: the composed map is the identity, sampled at whole pixels: exact.
    z = model.logits(spec, {"dense/kernel": jnp.eye(120)}, model.hyperparameters(spec), jnp.asarray(IMAGES),
                     jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(z).reshape(IMAGES.shape), IMAGES, rtol=1e-6)


HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]


@pytest.mark.parametrize("model_layers, message", [
    # an oblong input (28x14 after a 1x2 pooling): each side of window and input in its place
    ([{"type": "max_pooling2d", "pool_size": [1, 2]}, {"type": "conv2d", "filters": 2, "kernel_size": [3, 20]}, *HEAD],
     'model.layers[1] (conv2d): a 3x20 window does not fit its 28x14 input; use padding = "same", a smaller window '
     'or fewer pooling layers before it'),
    ([{"type": "flatten"}, {"type": "conv2d", "filters": 2, "kernel_size": 3}, *HEAD],
     "model.layers[1] (conv2d): needs an image (height, width, channels) but gets a vector of 784: put it before "
     "the flatten layer"),
    ([{"type": "conv2d", "filters": 2, "kernel_size": 3}, HEAD[1]],
     "model.layers[1] (dense): gets an image (26, 26, 2); add a flatten or global_average_pooling2d layer before it"),
])
def test_a_network_that_cannot_be_built_says_which_layer_and_why(model_layers, message):
    from mnistlab.errors import UserError

    with pytest.raises(UserError) as raised:
        spec_lib.from_dict({"model": {"layers": model_layers}})
    assert raised.value.args[0].endswith(message)


def test_windows_over_an_oblong_input_shrink_each_side_by_its_own_size():
    spec = spec_lib.from_dict({"model": {"layers": [
        {"type": "max_pooling2d", "pool_size": [1, 2]}, {"type": "conv2d", "filters": 2, "kernel_size": [3, 5]},
        {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}})
    assert spec_lib.output_shapes(spec.model.layers, (28, 28))[1:3] == [(28, 14, 1), (28 - 2, 14 - 4, 2)]


def test_batch_normalization_starts_in_float32():
    weights = layers.BatchNormalization().init_weights((4, 4, 3), lambda tensor: np.random.default_rng(0))
    assert {k: v.dtype for k, v in weights.items()} == dict.fromkeys(weights, np.dtype(np.float32))
