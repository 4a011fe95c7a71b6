"""The convnet floor's products, counted by hand, and its sums; no timing is asserted."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ has no __init__.py

import floor_cnn  # noqa: E402
from mnistlab import model, spec as spec_lib  # noqa: E402


def test_the_cnn_presets_products_by_hand():
    # 28x28x1 -> conv 3x3x32 -> 26x26 -> pool 13 -> conv 3x3x64 -> 11x11 -> pool 5 -> 1600 -> 10,
    # batch 64; the first convolution has no input gradient.
    got = floor_cnn.products(spec_lib.preset("cnn"))
    assert [(p.layer, p.role, p.m, p.k, p.n) for p in got] == [
        ("conv2d", "forward", 64 * 26 * 26, 9, 32),
        ("conv2d", "kernel gradient", 9, 64 * 26 * 26, 32),
        ("conv2d_1", "forward", 64 * 11 * 11, 288, 64),
        ("conv2d_1", "kernel gradient", 288, 64 * 11 * 11, 64),
        ("conv2d_1", "input gradient", 64 * 11 * 11, 64, 288),
        ("dense", "forward", 64, 1600, 10),
        ("dense", "kernel gradient", 1600, 64, 10),
        ("dense", "input gradient", 64, 10, 1600),
    ]


@pytest.mark.parametrize("preset", ["cnn", "speedrun", "cnn-best", "seed"])
def test_forward_products_are_the_models_multiply_adds_for_a_batch(preset):
    # Counted independently by the model's summary (kernel size x output positions).
    spec = spec_lib.preset(preset)
    forward = sum(p.multiply_adds for p in floor_cnn.products(spec) if p.role == "forward")
    assert forward == model.multiply_adds(spec.model) * spec.training.batch_size


def test_each_gradient_has_its_forward_products_multiply_adds():
    for spec in (spec_lib.preset("cnn"), spec_lib.preset("speedrun")):
        got = floor_cnn.products(spec)
        forward = {p.layer: p.multiply_adds for p in got if p.role == "forward"}
        assert all(p.multiply_adds == forward[p.layer] for p in got)


def test_floor_adds_up_its_products(monkeypatch):
    # A fixed time per product: the step is their sum, the epoch the step times the steps.
    monkeypatch.setattr(floor_cnn, "time_product", lambda p, repeats: 0.001 * (1 + (p.role == "forward")))
    result = floor_cnn.floor(spec_lib.preset("cnn"), repeats=1)
    assert result["steps_per_epoch"] == 938  # 60000 / 64, rounded up
    assert result["ms_per_step"] == pytest.approx(3 * 2 + 5 * 1)
    assert result["s_per_epoch"] == pytest.approx(11e-3 * 938)
    conv = result["products"][2]
    assert conv["gflop_per_s"] == pytest.approx(2 * 7744 * 288 * 64 / 2e-3 / 1e9, rel=1e-3)
    assert "**11.000**" in floor_cnn.markdown(result)


def test_time_product_times_a_real_product():
    seconds = floor_cnn.time_product(floor_cnn.Product("dense", "forward", 32, 64, 16), repeats=5, trials=1)
    assert 0 < seconds < 1
