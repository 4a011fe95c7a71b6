"""Decoding and MNIST preprocessing, checked against values computed independently here."""

import io
import struct
import zlib

import numpy as np
import pytest
import PIL.ImageFile
from PIL import Image

from mnistlab import imaging


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def com(a: np.ndarray) -> tuple[float, float]:
    """Centre of mass, written out independently of imaging.centre_of_mass."""
    a = a.astype(np.float64)
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return (ys * a).sum() / a.sum(), (xs * a).sum() / a.sum()


def box(a: np.ndarray) -> tuple[int, int]:
    """(height, width) of the nonzero pixels' bounding box."""
    rows, cols = np.nonzero(a)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, followed by almost no data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


GRADIENT = (np.arange(40 * 30).reshape(30, 40) % 256).astype(np.uint8)


# ------------------------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF"])
def test_lossless_formats_decode_to_the_same_grey_pixels(fmt):
    got = imaging.decode(encode(Image.fromarray(GRADIENT), fmt))
    np.testing.assert_array_equal(got, GRADIENT)


def test_jpeg_decodes_close_to_the_original():
    smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    got = imaging.decode(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert got.shape == (48, 64) and np.abs(got.astype(int) - smooth).max() <= 6


def test_colour_becomes_itu_r_601_luma():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    rgb[1, :] = (200, 100, 50)
    got = imaging.decode(encode(Image.fromarray(rgb), "PNG"))
    expected = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_allclose(got, expected, atol=1)


def test_sixteen_bit_png_is_scaled_not_clipped():
    deep = np.array([[0, 257, 32896, 65535]], np.uint16)
    got = imaging.decode(encode(Image.fromarray(deep), "PNG"))
    np.testing.assert_array_equal(got, [[0, 1, 128, 255]])


@pytest.mark.parametrize("ink, background", [(0, 255), (255, 0)])
def test_transparency_is_flattened_onto_a_contrasting_background(ink, background):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = ink
    rgba[3:7, 3:7, 3] = 255  # opaque ink square on a fully transparent field
    got = imaging.decode(encode(Image.fromarray(rgba), "PNG"))
    assert got[5, 5] == ink and got[0, 0] == background


def test_gif_gives_its_first_frame():
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert (imaging.decode(data) == 10).all()


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((10, 20), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    got = imaging.decode(encode(img, "JPEG", exif=exif.tobytes()))
    assert got.shape == (20, 10)


@pytest.mark.parametrize("data, code, words", [
    (b"", "empty", "no data"),
    (b"hello, world\n", "not_image", "PNG, JPEG, BMP or GIF"),
    (encode(Image.fromarray(GRADIENT), "TIFF"), "not_image", "PNG, JPEG, BMP or GIF"),
    (encode(Image.fromarray(GRADIENT), "PNG")[:60], "unreadable", "corrupt or truncated"),
])
def test_bad_bytes_raise_a_coded_error_naming_the_image(data, code, words):
    with pytest.raises(imaging.ImageError) as e:
        imaging.decode(data, name="upload.png")
    assert e.value.code == code and "upload.png" in str(e.value) and words in str(e.value)
    assert e.value.exit_code == 2  # a UserError: the CLI exits 2


def test_files_that_cannot_be_read_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(imaging.ImageError, match="empty.png: the file is empty") as e:
        imaging.decode(empty)
    assert e.value.code == "empty"
    with pytest.raises(imaging.ImageError, match="missing.png: cannot read it") as e:
        imaging.decode(tmp_path / "missing.png")
    assert e.value.code == "unreadable"


@pytest.mark.parametrize("side", [4001, 20_000, 100_000])
def test_too_many_pixels_are_refused_from_the_header(side, monkeypatch):
    # 4001^2 just passes the 16M limit; 100,000^2 is what a decompression bomb declares.
    data = png_with_header(side, side)

    def no_decoding(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)  # the header alone must decide
    with pytest.raises(imaging.ImageError) as e:
        imaging.decode(data, name="bomb.png")
    assert e.value.code == "too_large" and "bomb.png" in str(e.value)


def test_an_image_at_the_pixel_limit_is_accepted():
    img = Image.new("L", (4000, 4000), 0)  # exactly 16,000,000 pixels
    assert imaging.decode(encode(img, "PNG")).shape == (4000, 4000)
    with pytest.raises(imaging.ImageError, match="more than the 15,999,999 allowed"):
        imaging.decode(encode(img, "PNG"), max_pixels=15_999_999)


# ------------------------------------------------------------------------ preprocessing


def rectangle(height: int, width: int, *, canvas=(200, 300), at=(30, 40), ink=255, background=0) -> np.ndarray:
    img = np.full(canvas, background, np.uint8)
    img[at[0]:at[0] + height, at[1]:at[1] + width] = ink
    return img


@pytest.mark.parametrize("height, width, expected", [(50, 100, (10, 20)), (120, 30, (20, 5)), (7, 7, (20, 20))])
def test_the_ink_is_scaled_to_fit_20x20_keeping_the_aspect_ratio(height, width, expected):
    out = imaging.mnist_preprocess(rectangle(height, width))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert box(out) == expected
    assert out.max() == 255


@pytest.mark.parametrize("at", [(0, 0), (30, 40), (150, 200)])
def test_the_centre_of_mass_lands_on_pixel_14_14(at):
    img = rectangle(40, 60, at=at)
    img[at[0]:at[0] + 10, at[1]:at[1] + 20] = 120  # uneven ink: the mass is off the box centre
    out = imaging.mnist_preprocess(img)
    cy, cx = com(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_dark_on_light_is_inverted_to_light_on_dark():
    light = rectangle(50, 30)
    dark = 255 - light
    np.testing.assert_array_equal(imaging.mnist_preprocess(dark), imaging.mnist_preprocess(light))
    assert imaging.mnist_preprocess(dark)[0, 0] == 0  # background black, as in MNIST


def test_background_is_removed_and_contrast_stretched():
    pencil = rectangle(60, 40, ink=90, background=200)  # grey pencil on grey paper
    ink = imaging.ink(pencil)
    assert ink.min() == 0.0 and ink.max() == 1.0
    assert ink[0, 0] == 0.0 and ink[50, 50] == 1.0
    np.testing.assert_array_equal(imaging.mnist_preprocess(pencil), imaging.mnist_preprocess(rectangle(60, 40)))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel correlation, at the best of the 9 one-pixel shifts (a stroke 2 px wide moved
    by 1 px halves a plain correlation while the digit is the same)."""
    return max(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel().astype(float), b.ravel().astype(float))[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_mnist_digits_keep_their_shape_through_a_png_canvas_round_trip(mnist_test):
    # A test digit drawn black on white at 10x size, as the page's canvas sends it: the
    # preprocessing must give back a digit in a 20-pixel box centred by mass, close to
    # the original 28x28 digit.
    scores = []
    for original in mnist_test.test_images[:50]:
        big = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.BILINEAR)
        out = imaging.load(encode(big.convert("RGBA"), "PNG"))
        assert max(box(out)) in (19, 20)
        cy, cx = com(out)
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
        scores.append(similarity(out, original))
    assert min(scores) > 0.8 and np.mean(scores) > 0.93


def test_a_digit_with_its_mass_at_one_edge_is_never_cut_off():
    digit = np.zeros((20, 20), np.float32)
    digit[:, 0] = 1.0
    digit[10, 19] = 0.01  # the box is 20 wide but nearly all the mass is in column 0
    field = imaging.centre(digit)
    assert field.sum() == pytest.approx(digit.sum())  # everything kept
    assert field[:, 8].sum() == pytest.approx(20.0)  # moved as far right as it fits: left edge at 8


@pytest.mark.parametrize("image", [
    np.full((50, 50), 255, np.uint8),  # blank white
    np.zeros((50, 50), np.uint8),  # blank black
    np.clip(128 + np.random.default_rng(0).normal(0, 5, (60, 60)), 0, 255).astype(np.uint8),  # faint noise
])
def test_no_ink_is_an_error_not_a_guess(image):
    with pytest.raises(imaging.ImageError, match="blank.png: no digit found") as e:
        imaging.mnist_preprocess(image, name="blank.png")
    assert e.value.code == "no_ink"


def test_raw_takes_28x28_as_it_is_and_refuses_other_sizes():
    x = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(imaging.load(imaging.to_png(x), raw_input=True), x)
    with pytest.raises(imaging.ImageError, match=r"big.png: raw input must be 28x28 pixels, this image is 30x29") as e:
        imaging.load(imaging.to_png(np.zeros((29, 30), np.uint8)), name="big.png", raw_input=True)
    assert e.value.code == "wrong_size" and "--raw" in str(e.value)


def test_a_large_jpeg_photo_decodes_reduced_and_gives_the_same_digit(mnist_test):
    original = mnist_test.test_images[0]
    photo = Image.fromarray(255 - original).resize((2400, 2400), Image.Resampling.BICUBIC).convert("RGB")
    data = encode(photo, "JPEG", quality=90)
    out = imaging.load(data)
    via_png = imaging.load(encode(photo.resize((280, 280), Image.Resampling.BILINEAR), "PNG"))
    assert np.corrcoef(out.ravel().astype(float), via_png.ravel().astype(float))[0, 1] > 0.95


@pytest.fixture(scope="module")
def mnist_test(mnist_root):
    from mnistlab import data

    return data.load("mnist", mnist_root)
