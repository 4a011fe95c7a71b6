"""Decoding and MNIST preprocessing, checked against values computed independently here."""

import io
import struct
import zlib

import numpy as np
import pytest
import PIL.ImageFile
import PIL.JpegImagePlugin
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


# ------------------------------------------------- every message, boundary and rule, exactly

def jpeg(side: int) -> bytes:
    return encode(Image.new("L", (side, side), 0), "JPEG")


PNG = encode(Image.fromarray(GRADIENT), "PNG")


@pytest.mark.parametrize("data, code, message", [
    (b"", "empty", "image: no data. Send a PNG, JPEG, BMP or GIF image."),
    (b"hello", "not_image", "image: not an image that mnistlab reads: give a PNG, JPEG, BMP or GIF file."),
    (PNG[:20], "unreadable", "image: cannot read it (Truncated File Read)."),
    (b"BM" + bytes(20), "unreadable", "image: cannot read it (Unsupported BMP header type (0))."),
    (PNG[:60], "unreadable", "image: the PNG data is corrupt or truncated (image file is truncated). "
                             "Save the image again."),
    (png_with_header(6000, 3000), "too_large", "image: 6000x3000 is 18,000,000 pixels, more than the "
                                               "16,000,000 allowed. Scale it down first."),
    (png_with_header(100_000, 100_000), "too_large", "image: the image declares more than 16,000,000 pixels "
                                                     "(a decompression bomb?). Scale it down first."),
    (png_with_header(0, 5), "not_image", "image: not an image that mnistlab reads: give a PNG, JPEG, BMP or GIF file."),
])
def test_every_decoding_error_has_its_code_and_whole_message(data, code, message):
    with pytest.raises(imaging.ImageError) as e:
        imaging.decode(data)
    assert (e.value.code, str(e.value)) == (code, message)


def test_a_file_decodes_as_its_bytes_and_its_errors_name_it(tmp_path):
    path = tmp_path / "gradient.png"
    path.write_bytes(PNG)
    np.testing.assert_array_equal(imaging.decode(path), GRADIENT)
    missing = tmp_path / "missing.png"
    with pytest.raises(imaging.ImageError) as e:
        imaging.decode(missing)
    assert str(e.value) == f"{missing}: cannot read it (No such file or directory). Check the path and its permissions."
    with pytest.raises(imaging.ImageError) as e:
        imaging.load(missing, name="seven")
    assert str(e.value).startswith("seven: cannot read it")
    blank = tmp_path / "blank.png"
    blank.write_bytes(imaging.to_png(np.zeros((30, 30), np.uint8)))
    with pytest.raises(imaging.ImageError, match=f"^{blank}: no digit found"):
        imaging.load(blank)
    with pytest.raises(imaging.ImageError, match=f"^{blank}: 30x30 is 900 pixels, more than the 899 allowed"):
        imaging.load(blank, max_pixels=899)


@pytest.mark.parametrize("side, drafted", [(224, 224), (225, 113), (2400, 300)])
def test_a_jpeg_larger_than_8x28_decodes_at_the_smallest_scale_keeping_4x28(side, drafted):
    # libjpeg scales by 1/2, 1/4 or 1/8: the smallest scale keeping >= 112 pixels a side.
    assert imaging.decode(jpeg(side)).shape == (drafted, drafted)
    assert imaging.decode(jpeg(side), draft=False).shape == (side, side)


def test_load_drafts_a_large_jpeg_but_takes_raw_input_at_full_size(monkeypatch):
    drafts = []
    real = PIL.JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(PIL.JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append((mode, size)) or real(self, mode, size))
    photo = np.zeros((600, 600), np.uint8)
    photo[200:400, 280:320] = 255
    imaging.load(encode(Image.fromarray(photo), "JPEG"))
    assert drafts == [("L", (112, 112))]
    with pytest.raises(imaging.ImageError, match=r"^image: raw input must be 28x28 pixels, this image is 600x600"):
        imaging.load(encode(Image.fromarray(photo), "JPEG"), raw_input=True)
    assert len(drafts) == 1


def test_sixteen_bit_levels_are_rounded_after_scaling_by_255_over_65535():
    deep = np.array([[51529, 128, 129]], np.uint16)  # 200.502, 0.498, 0.502 grey levels
    got = imaging.decode(encode(Image.fromarray(deep), "PNG"))
    np.testing.assert_array_equal(got, [[201, 0, 1]])
    assert got.dtype == np.uint8


def rgba_png(rgba: np.ndarray) -> bytes:
    return encode(Image.fromarray(rgba.astype(np.uint8), "RGBA"), "PNG")


@pytest.mark.parametrize("ink", [0, 50])
def test_partly_transparent_ink_is_blended_onto_its_background(ink):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = ink  # dark ink, fully transparent...
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[0, 2, 3] = 255, 51, 100  # ...but for three pixels
    got = imaging.decode(rgba_png(rgba))
    # dark ink goes on white: grey = ink * a + 255 * (1 - a), a = alpha / 255
    assert got.dtype == np.uint8
    expected = [round(ink * a / 255 + 255 * (1 - a / 255)) for a in (255, 51, 100, 0)]
    assert [got[0, 0], got[0, 1], got[0, 2], got[3, 3]] == expected


def test_coloured_ink_on_transparency_keeps_its_luma():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1, 1] = (200, 100, 50, 255)
    got = imaging.decode(rgba_png(rgba))
    assert got[1, 1] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) and got[0, 0] == 255  # 124: dark ink


@pytest.mark.parametrize("level, background", [(127, 255), (128, 0)])
def test_ink_from_mid_grey_up_goes_on_black(level, background):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3] = (level, level, level, 255)  # four opaque pixels: the mean ink, not the sum, decides
    assert imaging.decode(rgba_png(rgba))[0, 0] == background


def test_nothing_drawn_on_transparency_is_blank_white_paper():
    assert (imaging.decode(rgba_png(np.zeros((4, 4, 4)))) == 255).all()


def test_the_border_is_the_outermost_ring_of_pixels():
    grey = np.arange(20).reshape(4, 5)
    # 0 1 2 3 4 / 5 6 7 8 9 / 10 11 12 13 14 / 15 16 17 18 19: all but 6, 7, 8, 11, 12, 13
    assert sorted(imaging.border(grey)) == [0, 1, 2, 3, 4, 5, 9, 10, 14, 15, 16, 17, 18, 19]


@pytest.mark.parametrize("low, high, inverted", [(127, 128, False), (128, 128, True), (128, 129, True), (127, 127, False)])
def test_a_border_lighter_than_127_5_means_dark_ink_on_light(low, high, inverted):
    grey = np.full((4, 4), low, np.uint8)
    grey[0, :] = grey[1:3, 0] = high  # border: 6 pixels at `high`, 6 at `low`
    grey[1:3, 1:3] = 0 if inverted else 255
    got, background = imaging.light_on_dark(grey)
    median = (low + high) / 2
    np.testing.assert_array_equal(got, 255 - grey if inverted else grey)
    assert background == (255 - median if inverted else median)


def test_ink_needs_32_grey_levels_above_the_background():
    grey = np.zeros((5, 5), np.uint8)
    grey[2, 2] = 32
    assert imaging.levels(grey, 0.0) == 32.0
    grey[2, 2] = 31
    with pytest.raises(imaging.ImageError) as e:
        imaging.levels(grey, 0.0)
    assert str(e.value) == ("image: no digit found: the image is a flat colour (ink and background differ by 31 "
                            "of 255 grey levels). Give a picture with a visible digit.")
    for preprocess in (imaging.ink, imaging.mnist_preprocess):
        with pytest.raises(imaging.ImageError, match="^image: no digit found"):
            preprocess(grey)
        with pytest.raises(imaging.ImageError, match="^seven.png: no digit found"):
            preprocess(grey, name="seven.png")


def test_stretch_maps_the_background_to_0_and_background_plus_contrast_to_1():
    got = imaging.stretch(np.array([[10, 50, 70, 90]], np.uint8), 50.0, 40.0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0.0, 0.0, 0.5, 1.0]])  # darker than the background: 0


def test_the_bounding_box_holds_the_pixels_strictly_above_the_threshold():
    image = np.zeros((6, 6))
    image[1, 2] = image[3, 4] = 0.5
    image[5, 0] = 0.2  # at the threshold: outside
    assert imaging.bounding_box(image, 0.2) == (1, 4, 2, 5)


def test_fit_keeps_a_faint_edge_row_and_a_one_pixel_line():
    # Shrinking 60 -> 20 with Pillow's bilinear widened to a triangle of radius 3 input
    # pixels: output row 0 (centred on input row 1) weighs input rows 0..3 by 2/3, 1, 2/3,
    # 1/3 (normalised by 8/3); row 4's 1.0 gets weight 0. Bicubic's negative lobe would
    # take row 0 below zero and the box would lose its edge.
    ink = np.zeros((60, 60), np.float32)
    ink[0] = 0.05
    ink[4:] = 1.0
    got = imaging.fit(ink)
    assert got.shape == (20, 20)
    np.testing.assert_allclose(got[0], 0.05 * (2 / 3) / (8 / 3), rtol=1e-6)
    assert imaging.fit(np.ones((100, 1), np.float32)).shape == (20, 1)  # never 0 pixels wide
    assert imaging.fit(np.ones((1, 100), np.float32)).shape == (1, 20)


@pytest.mark.parametrize("transpose", [False, True])
def test_a_digit_is_clamped_inside_the_field_on_both_sides_of_both_axes(transpose):
    def place(digit):
        return imaging.centre(digit.T).T if transpose else imaging.centre(digit)

    far = np.zeros((20, 20), np.float32)
    far[19, :] = 1.0  # all the mass on the last row: it would go above the top
    np.testing.assert_array_equal(place(far)[:20, 4:24], far)
    assert place(far).dtype == np.float32  # the digit's
    near = np.zeros((20, 20), np.float32)
    near[0, :] = 1.0  # all the mass on the first row: it would go below the bottom
    np.testing.assert_array_equal(place(near)[8:, 4:24], near)


def test_faint_specks_do_not_widen_the_box():
    digit = rectangle(60, 40)
    speck = digit.copy()
    speck[190, 290] = 0.19 * 255  # under 20% of the contrast, far from the digit
    np.testing.assert_array_equal(imaging.mnist_preprocess(speck), imaging.mnist_preprocess(digit))


def test_raw_and_png_take_any_integer_array():
    x = np.random.default_rng(2).integers(0, 256, (28, 28))  # int64
    assert imaging.raw(x).dtype == np.uint8
    with pytest.raises(imaging.ImageError, match="^image: raw input must be 28x28 pixels, this image is 3x2"):
        imaging.raw(np.zeros((2, 3)))
    np.testing.assert_array_equal(imaging.decode(imaging.to_png(x)), x)


def test_flatten_takes_a_linear_slope_of_light_out():
    rows, cols = np.indices((21, 31))
    paper = 100.0 + 2.0 * rows + 3.0 * cols  # lit from the bottom right
    # The centre pixel's level everywhere: the plane through the edges' medians, centred.
    np.testing.assert_allclose(imaging.flatten(paper), np.full((21, 31), 100.0 + 2 * 10 + 3 * 15), atol=1e-4)


def test_flatten_divides_light_paper_by_its_light_so_ink_keeps_its_contrast():
    rows, cols = np.indices((21, 31))
    light = 1.0 - 0.02 * cols  # 1 at the left edge, 0.4 at the right
    paper = 220.0 * light
    picture = paper.copy()
    picture[8:13, 5:8] = 40.0 * light[8:13, 5:8]  # ink on the bright side ...
    picture[8:13, 23:26] = 40.0 * light[8:13, 23:26]  # ... and on the dark side
    out = imaging.flatten(picture)
    level = 220.0 * (1.0 - 0.02 * 15)  # the plane's level: the mean of the edges' medians, at the centre
    np.testing.assert_allclose(out[0], level, rtol=1e-5)  # paper: even
    np.testing.assert_allclose(out[8:13, 5:8], 40.0 / 220.0 * level, rtol=1e-5)  # ink: the same on both sides
    np.testing.assert_allclose(out[8:13, 23:26], 40.0 / 220.0 * level, rtol=1e-5)


def test_flatten_leaves_even_paper_and_ink_touching_one_edge_alone():
    paper = np.full((20, 30), 200, np.uint8)
    np.testing.assert_array_equal(imaging.flatten(paper), paper)
    touching = paper.copy()
    touching[:6, 3:10] = 20  # ink over 7 of the top edge's 30 pixels: the edge's median is paper
    np.testing.assert_array_equal(imaging.flatten(touching), touching)


def test_noise_is_the_robust_standard_deviation_of_the_border():
    grey = np.full((5, 5), 50.0)
    grey[2, 2] = 255  # the inside is not border
    ring = np.array([50, 52, 48, 50, 51, 49, 50, 53, 47, 50, 50, 90, 50, 46, 54, 50], float)
    grey[0], grey[-1] = ring[:5], ring[5:10]
    grey[1:-1, 0], grey[1:-1, -1] = ring[10:13], ring[13:]
    # Median 50; absolute deviations sorted: 0 x7, 1 x2, 2 x2, 3 x2, 4 x2, 40; the middle two are 1 and 1.
    assert imaging.noise(grey) == pytest.approx(1.4826 * 1)
    assert imaging.noise(np.full((4, 4), 7)) == 0.0


def photo_of(digit: np.ndarray, rng, slope: float, noise: float) -> np.ndarray:
    """A dark-on-light picture of a light-on-dark 0..255 digit: paper 230 falling by `slope`
    grey levels across the width, ink 40, Gaussian noise of `noise` levels."""
    h, w = digit.shape
    light = 1.0 - slope / 230 * np.linspace(0, 1, w)[None, :]
    ink = digit / 255.0
    return np.clip((230 + (40 - 230) * ink) * light + rng.normal(0, noise, (h, w)), 0, 255).astype(np.uint8)


def test_a_photo_lit_from_one_side_with_noise_gives_the_clean_digit(mnist_test):
    rng = np.random.default_rng(0)
    for digit in mnist_test.test_images[:10]:
        big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR))
        clean = imaging.mnist_preprocess(255 - big)
        got = imaging.mnist_preprocess(photo_of(big, rng, slope=90, noise=6))
        # Before the light was flattened, the dark side of the paper passed for ink and
        # the crop kept the sheet: the result correlated with the digit at 0.14 to 0.66.
        assert np.corrcoef(got.ravel().astype(float), clean.ravel().astype(float))[0, 1] > 0.95
        assert box(got) == pytest.approx(box(clean), abs=2)


def test_a_bright_speck_in_a_noisy_picture_moves_no_edge_of_the_box(mnist_test):
    rng = np.random.default_rng(1)
    big = np.asarray(Image.fromarray(mnist_test.test_images[0]).resize((112, 112), Image.Resampling.BILINEAR))
    noisy = photo_of(big, rng, slope=0, noise=8)
    speck = noisy.copy()
    speck[2, 109] = 0  # one pixel as dark as ink, in a corner
    np.testing.assert_array_equal(imaging.mnist_preprocess(speck), imaging.mnist_preprocess(noisy))


def by_plane(g: np.ndarray, light: bool) -> np.ndarray:
    """flatten's arithmetic written out: the plane through the edges' medians, centred at
    their mean; light paper divided by it (clamped at 1 and at 255), dark ground minus it."""
    g = g.astype(np.float64)
    h, w = g.shape
    top, bottom, left, right = np.median(g[0]), np.median(g[-1]), np.median(g[:, 0]), np.median(g[:, -1])
    level = (top + bottom + left + right) / 4
    rows, cols = np.indices((h, w))
    plane = level + (bottom - top) / (h - 1) * (rows - (h - 1) / 2) + (right - left) / (w - 1) * (cols - (w - 1) / 2)
    return np.minimum(g * level / np.maximum(plane, 1.0), 255.0) if light else np.maximum(g - (plane - level), 0.0)


@pytest.mark.parametrize("lights", [0, 1])
def test_flatten_follows_a_slope_along_one_axis_of_exactly_one_level_a_pixel(lights):
    rows, cols = np.indices((9, 11))
    ground = (40.0 if lights == 0 else 180.0) + (rows if lights == 0 else cols)
    got = imaging.flatten(ground.astype(np.uint8))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, by_plane(ground, light=lights == 1), rtol=1e-6)
    np.testing.assert_allclose(got, ground[4, 5], rtol=1e-6)  # even: the centre's level everywhere


def test_flatten_on_dark_ground_subtracts_the_slope_and_never_goes_below_black():
    rows, cols = np.indices((7, 9))
    ground = 30.0 + 3.0 * rows + 2.0 * cols
    ground[3, 4] = 0.0  # a hole darker than the ground below it
    got = imaging.flatten(ground)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, by_plane(ground, light=False), rtol=1e-6)
    assert got[3, 4] == 0.0 and got[0, 0] == pytest.approx(30.0 + 3 * 3 + 2 * 4)


@pytest.mark.parametrize("shift, light", [(0, False), (1, True)])
def test_flatten_divides_only_above_mid_grey(shift, light):
    # Border median 127.5 (+ shift / 2): at 127.5 exactly, dark ground as light_on_dark decides.
    grey = np.array([[120, 127, 128, 135]] * 3, float)
    grey[:, 1:3] += [0, shift]
    got = imaging.flatten(grey)
    np.testing.assert_allclose(got, by_plane(grey, light=light), rtol=1e-6)
    assert not np.allclose(got, by_plane(grey, light=not light), rtol=1e-6)


def test_flatten_clamps_the_light_at_one_level_and_the_result_at_white():
    grey = np.full((5, 5), 200.0)
    grey[-1] = [0, 0, 0, 1, 3]  # the bottom edge is black: the plane falls to 0 there
    grey[0, 2] = 255.0  # a highlight on the bright side
    got = imaging.flatten(grey)
    np.testing.assert_allclose(got, by_plane(grey, light=True), rtol=1e-6)
    assert got.max() == 255.0


def test_flatten_leaves_pictures_too_thin_to_have_an_inside():
    for grey in (np.arange(5.0)[None] * 40, np.arange(10.0).reshape(2, 5) * 20, np.arange(10.0).reshape(5, 2) * 20):
        np.testing.assert_array_equal(imaging.flatten(grey), grey)
    three = np.array([[10.0, 10, 10], [20, 20, 20], [30, 30, 30]])
    np.testing.assert_allclose(imaging.flatten(three), 20.0)  # three rows and three columns do


def test_flatten_divides_by_one_level_at_least_where_the_light_falls_to_nothing():
    # Light paper (border median 200) whose bottom and right edges are mostly black: the
    # plane through the edges' medians (level 100) falls below 1 towards the bottom right.
    grey = np.full((5, 9), 200.0)
    grey[-1, 4:] = 0.0  # the bottom edge: median 0
    grey[2:, -1] = 0.0  # the right edge: median 0
    grey[3, 7] = 1.0  # where the plane is 100 - 50 - 75 = -25
    got = imaging.flatten(grey)
    np.testing.assert_allclose(got, by_plane(grey, light=True), rtol=1e-6)
    assert got[3, 7] == pytest.approx(1.0 * 100 / 1.0)  # divided by the clamp, 1, not by the plane

