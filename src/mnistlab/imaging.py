"""Image files -> the 28x28 uint8 pixels an MNIST network expects.

    pixels = imaging.load(Path("seven.jpg"))            # decode + MNIST preprocessing
    pixels = imaging.load(png_bytes, raw=True)          # a 28x28 image taken as it is

Decoding (`decode`) reads PNG, JPEG, BMP or GIF (first frame) in any size, mode and
colour with Pillow and returns grey levels, 0 black .. 255 white. Transparency is
flattened onto a background that contrasts with the ink. Only those four formats are
opened (Pillow's other decoders are never reached), and an image of more than
`MAX_PIXELS` pixels is refused from its header, before anything is decompressed.

`mnist_preprocess` repeats what LeCun et al. did to the NIST digits to make MNIST, so a
digit drawn or photographed anywhere looks like the training data:

1. grey; inverted when the digit is dark on light (decided by the border, which is
   background in any digit picture), so ink is bright on black as in MNIST;
2. the background level subtracted and the contrast stretched to 0..255; for a photo,
   the light's slope across the picture is evened out first (`flatten`: a plane through
   the four edges' median levels) and the sensor noise (three robust standard
   deviations of the border) goes with the background, so paper lit from one side is
   background everywhere;
3. cropped to the ink's bounding box (ink above 20% of the contrast: faint noise and
   antialiasing halos do not widen it; in a noisy picture, found on a copy smoothed by a
   1-pixel Gaussian, so a single bright speck of noise does not either, nor set the
   contrast);
4. scaled, keeping the aspect ratio, so the longer side is 20 pixels (MNIST: 59,987 of
   the 60,000 training digits have a 20-pixel longer side);
5. pasted into 28x28 so that its centre of mass is at pixel (14, 14) (the training
   digits' mean centre of mass is (14.00, 14.01), std 0.29 px).

Every function below `decode` is pure: NumPy arrays in, NumPy arrays out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy import ndimage

from mnistlab.errors import UserError

FORMATS = ("PNG", "JPEG", "BMP", "GIF")
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_PIXELS = 16_000_000  # width x height; a 4000x4000 photo passes, a decompression bomb does not
SIZE = 28  # the network's input: SIZE x SIZE
BOX = 20  # the digit's longer side inside it
MIN_CONTRAST = 32  # grey levels between background and ink below which there is no digit
BOX_THRESHOLD = 0.2  # ink (0..1) that counts for the bounding box: faint noise does not widen it


class ImageError(UserError):
    """An image that cannot be used; `code` says which kind of problem it is.

    Codes: `empty`, `not_image` (unknown or unsupported format), `unreadable` (corrupt or
    truncated), `too_large` (more than MAX_PIXELS), `no_ink` (nothing to recognise),
    `wrong_size` (`raw` needs 28x28).
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def decode(source: bytes | Path, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
           draft: bool = True) -> np.ndarray:
    """An image file's (or its bytes') grey levels: (H, W) uint8, 0 black .. 255 white.

    `name` is what error messages call the image (default: the path, or "image").
    `draft` lets a large JPEG decode at a reduced scale (a 4000x3000 photo at 1/8 size
    decodes ~20x faster, and the digit ends up 20 pixels tall anyway).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(source) if isinstance(source, Path) else "image")
    if isinstance(source, Path):
        try:
            if source.stat().st_size == 0:
                raise ImageError("empty", f"{label}: the file is empty. Give a PNG, JPEG, BMP or GIF image.")
        except OSError as e:
            raise ImageError("unreadable", f"{label}: cannot read it ({e.strerror or e}). "
                             "Check the path and its permissions.") from None
        fp = source
    else:
        if len(source) == 0:
            raise ImageError("empty", f"{label}: no data. Send a PNG, JPEG, BMP or GIF image.")
        fp = io.BytesIO(source)
    try:
        img = Image.open(fp, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not_image", f"{label}: not an image that mnistlab reads: give a PNG, "
                         "JPEG, BMP or GIF file.") from None
    except Image.DecompressionBombError:
        raise ImageError("too_large", f"{label}: the image declares more than {max_pixels:,} "
                         "pixels (a decompression bomb?). Scale it down first.") from None
    except OSError as e:
        raise ImageError("unreadable", f"{label}: cannot read it ({e}).") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError("too_large", f"{label}: {width}x{height} is {width * height:,} pixels, more "
                             f"than the {max_pixels:,} allowed. Scale it down first.")
        try:
            if draft and img.format == "JPEG" and min(width, height) > 8 * SIZE:
                img.draft("L", (4 * SIZE, 4 * SIZE))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _grey(img)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError("unreadable", f"{label}: the {img.format} data is corrupt or truncated "
                             f"({e}). Save the image again.") from None


def _grey(img) -> np.ndarray:
    """Pillow image (any mode the four formats give) -> (H, W) uint8 grey, transparency flattened."""
    if img.mode.startswith("I"):
        # 16-bit PNGs: Pillow's own conversion to "L" clips at 255 rather than scaling.
        return np.round(np.asarray(img) * (255 / 65535)).astype(np.uint8)
    if not img.has_transparency_data:
        return np.asarray(img.convert("L"))
    rgba = img.convert("RGBA")
    grey = np.asarray(rgba.convert("L"))  # ITU-R 601 luma of the colour, alpha aside
    alpha = np.asarray(rgba.getchannel("A")) / 255
    # Ink on transparency: put it on white if the ink is dark, on black if light, so a
    # black-on-transparent and a white-on-transparent digit both survive (and nothing
    # drawn at all is blank paper). Opaque pixels keep their grey.
    dark_ink = (grey * alpha).sum() < 128 * alpha.sum() or not alpha.any()
    background = 255 if dark_ink else 0
    return np.round(grey * alpha + background * (1 - alpha)).astype(np.uint8)


def border(grey: np.ndarray) -> np.ndarray:
    """The outermost pixels of an image, as one flat array."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def light_on_dark(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """(image, background): the image inverted when its border (the background) is
    lighter than mid-grey, as MNIST's digits are light on black where paper and the
    page's canvas are dark on white; and the border's median grey level after that."""
    background = float(np.median(border(grey)))
    return (255 - grey, 255.0 - background) if background > 127.5 else (grey, background)


def flatten(grey: np.ndarray) -> np.ndarray:
    """The image (float32) with the light made even across it: the paper's level is a plane
    through the median grey levels of the four edges (robust to ink touching an edge),
    centred at their mean. Light paper is divided by it (light multiplies what paper and
    ink reflect, so the ink keeps its contrast to the paper), dark ground has it subtracted.
    Evenly lit pictures come back as they are.

    Why: a phone photo of paper is lit from one side or under a lamp, its brightness
    falling off smoothly across the picture; without this, the darker side of the paper
    passes for ink and the crop keeps the whole sheet.
    """
    g = grey.astype(np.float32)
    h, w = g.shape
    if h < 3 or w < 3:  # all border: no inside to even out
        return g
    top, bottom = float(np.median(g[0])), float(np.median(g[-1]))
    left, right = float(np.median(g[:, 0])), float(np.median(g[:, -1]))
    slope_rows, slope_cols = (bottom - top) / (h - 1), (right - left) / (w - 1)
    if slope_rows == 0 and slope_cols == 0:
        return g
    level = (top + bottom + left + right) / 4
    rows = (np.arange(h, dtype=np.float32) - (h - 1) / 2)[:, None]
    cols = (np.arange(w, dtype=np.float32) - (w - 1) / 2)[None, :]
    plane = level + slope_rows * rows + slope_cols * cols
    if np.median(border(g)) > 127.5:  # light paper: reflectance times light
        return np.minimum(g * (level / np.maximum(plane, 1.0)), 255.0)
    return np.maximum(g - (plane - level), 0.0)


def noise(grey: np.ndarray) -> float:
    """The sensor noise of a (flattened) picture: the robust standard deviation (1.4826
    median absolute deviations) of its border, which is background. 0 for clean paper."""
    edge = border(grey)
    return float(1.4826 * np.median(np.abs(edge - np.median(edge))))


def levels(grey: np.ndarray, background: float, *, name: str = "image") -> float:
    """The contrast of a light-on-dark image: how far its brightest pixel stands above
    the background. Raises ImageError("no_ink") when that is under MIN_CONTRAST grey
    levels: a flat picture with no digit in it."""
    contrast = float(grey.max()) - background
    if contrast < MIN_CONTRAST:
        raise ImageError("no_ink", f"{name}: no digit found: the image is a flat colour (ink and "
                         f"background differ by {contrast:.0f} of 255 grey levels). "
                         "Give a picture with a visible digit.")
    return contrast


def stretch(grey: np.ndarray, background: float, contrast: float) -> np.ndarray:
    """Grey levels -> ink in [0, 1]: the background 0, the strongest ink (background + contrast) 1."""
    return np.maximum((grey.astype(np.float32) - background) / contrast, 0.0)


def ink(grey: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Any grey image -> ink in [0, 1], bright digit on a 0 background (steps 1 and 2)."""
    g, background = light_on_dark(grey)
    return stretch(g, background, levels(g, background, name=name))


def bounding_box(image: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the pixels > threshold."""
    mask = image > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit(ink_: np.ndarray, box: int = BOX) -> np.ndarray:
    """Scale so the longer side is `box` pixels, keeping the aspect ratio.

    Pillow's bilinear filter, widened when shrinking (an antialiased average): its weights
    are never negative, so an edge of the crop with ink stays an edge with ink (Lanczos'
    negative lobes could erase a faint edge row and shrink the box).
    """
    from PIL import Image

    h, w = ink_.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow: (width, height)
    resized = Image.fromarray(ink_).resize(size, Image.Resampling.BILINEAR)  # float: Pillow's mode "F"
    return np.asarray(resized)  # weights >= 0 summing to 1: still in [0, 1]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted mean pixel position."""
    total = float(image.sum())
    h, w = image.shape
    return float(image.sum(axis=1) @ np.arange(h)) / total, float(image.sum(axis=0) @ np.arange(w)) / total


def centre(digit: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Paste `digit` into a size x size black field with its centre of mass at (size/2, size/2).

    The shift is whole pixels (pixel values are copied, not resampled), so the centre of
    mass lands within 0.5 px of the target; it is clamped so the digit is never cut off
    (only a digit with nearly all its mass on one edge of its box moves less).
    """
    h, w = digit.shape
    cy, cx = centre_of_mass(digit)
    top = int(np.clip(round(size / 2 - cy), 0, size - h))
    left = int(np.clip(round(size / 2 - cx), 0, size - w))
    field = np.zeros((size, size), digit.dtype)
    field[top:top + h, left:left + w] = digit
    return field


def mnist_preprocess(grey: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Any grey image of a digit -> (28, 28) uint8 as in MNIST (see the module docstring)."""
    g, background = light_on_dark(flatten(grey))
    sigma = noise(g)
    # Noise is background too: three standard deviations above the paper is where ink starts.
    background += 3.0 * sigma
    # In a noisy picture the contrast and the box are found on a copy smoothed by a
    # 1-pixel Gaussian: a lone bright speck neither sets the ink's level nor moves an edge.
    smooth = g if sigma == 0 else ndimage.gaussian_filter(g, 1.0)
    contrast = levels(smooth, background, name=name)
    top, bottom, left, right = bounding_box(smooth, background + BOX_THRESHOLD * contrast)
    digit = fit(stretch(g[top:bottom, left:right], background, contrast))
    return (centre(digit) * 255.0).round().astype(np.uint8)


def raw(grey: np.ndarray, *, name: str = "image") -> np.ndarray:
    """A grey image taken as it is: it must already be 28x28 (MNIST's light-on-dark)."""
    if grey.shape != (SIZE, SIZE):
        h, w = grey.shape
        raise ImageError("wrong_size", f"{name}: raw input must be {SIZE}x{SIZE} pixels, this image "
                         f"is {w}x{h}. Drop --raw (raw=false) to crop and scale it as MNIST was.")
    return np.ascontiguousarray(grey, np.uint8)


def load(source: bytes | Path, *, name: str | None = None, raw_input: bool = False,
         max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode and prepare one image: (28, 28) uint8, ready for the network."""
    label = name or (str(source) if isinstance(source, Path) else "image")
    grey = decode(source, name=label, max_pixels=max_pixels, draft=not raw_input)
    return raw(grey, name=label) if raw_input else mnist_preprocess(grey, name=label)


def to_png(pixels: np.ndarray) -> bytes:
    """A uint8 grey array as PNG bytes (lossless: `decode(to_png(x))` is x)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
