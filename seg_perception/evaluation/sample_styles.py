"""Shifted domains of the synthetic sample drive (``make-sample-drive --style``): dusk, fog, rain.

A model trained on the clear-day sample street meets conditions it has not seen when the drive is
rendered with a style: the scene and its ground truth stay exactly the same (same world, same
polygons, same label ids), only the light, the contrast and the sensor change. So a style measures
how the model copes with a shift of the input alone, and the renderer's ground truth can stand in
for a person's corrections when a shifted drive is mined and fine-tuned on.

* ``dusk``: little light (a quarter to under half of the day's), a warm cast from street lights,
  and the camera's auto-exposure making up for it (gain up to 3x, to three quarters of the day's
  brightness), which amplifies the sensor noise with the image.
* ``fog``: the image fades into fog colour with distance, visibility 30-66 m. The renderer keeps
  no depth buffer, so depth is estimated from the row: below the horizon the road's depth at that
  row, above it that of a facade about 8 m high, and the sky is far away.
* ``rain``: a darker, flatter image, rain streaks slanting across it and blurred drops on the lens.

The strength of each style varies along the drive (a slow sine with a phase from the seed): some
frames are darker, foggier or rainier than others, as on a real drive. Everything is a function of
``(seed, frame)``, so a styled drive renders the same every time; its random streams are separate
from the unstyled renderer's, so a drive without a style is unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np

STYLES = ("dusk", "fog", "rain")
#: Salt of the style's random stream, so it never coincides with the renderer's sensor noise stream.
_STYLE_STREAM = 0x57A1E


def style_strength(seed: int, frame: int) -> float:
    """How strong the style is at ``frame`` (0.4-1.0): a slow sine whose phase comes from the seed."""
    phase = (seed * 2.399963) % (2 * np.pi)  # golden angle: neighbouring seeds are far apart in phase
    return 0.7 + 0.3 * float(np.sin(frame / 6.0 + phase))


def check_style(style: str | None) -> None:
    if style is not None and style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {str(style)[:40]!r}")


def apply_style(image: np.ndarray, style: str, seed: int, frame: int, horizon_row: float,
                ground_depth_px: float, sky: np.ndarray) -> np.ndarray:
    """The float RGB ``image`` (0-255, before the sensor noise and lens blur) as seen in ``style``.

    ``horizon_row`` is the image row of the horizon and ``ground_depth_px`` the focal length times
    the camera height, so that ``ground_depth_px / (row - horizon_row)`` is the depth of the road at
    ``row`` in metres; ``sky`` (HxW bool) marks the sky. Fog uses them for depth.
    """
    check_style(style)
    strength = style_strength(seed, frame)
    rng = np.random.default_rng((seed, frame, _STYLE_STREAM))
    if style == "dusk":
        return _dusk(image, strength, rng)
    if style == "fog":
        return _fog(image, strength, horizon_row, ground_depth_px, sky, rng)
    return _rain(image, strength, rng)


def _dusk(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    light = 0.55 - 0.3 * strength  # of the day's light
    exposure = min(3.0, 0.75 / light)  # auto-exposure gain, as a camera at dusk
    tint = np.array([1.0, 0.85, 0.7], np.float32)
    sensor = image * (light * tint) + 3.0 + rng.normal(0.0, 3.5, image.shape).astype(np.float32)
    return sensor * exposure


#: Height (m) above the camera of the facades whose depth fog assumes above the horizon, as a
#: multiple of the camera's height above the road.
_ABOVE_HORIZON_SCALE = 6.0
_FAR_M = 200.0


def _fog(image: np.ndarray, strength: float, horizon_row: float, ground_depth_px: float, sky: np.ndarray,
         rng: np.random.Generator) -> np.ndarray:
    rows = np.arange(image.shape[0], dtype=np.float32)[:, None]
    scale = np.where(rows > horizon_row, 1.0, _ABOVE_HORIZON_SCALE)
    depth = np.minimum(ground_depth_px * scale / np.maximum(np.abs(rows - horizon_row), 0.5), _FAR_M)
    depth = np.where(sky, _FAR_M, np.broadcast_to(depth, sky.shape))[..., None]
    visibility = 90.0 - 60.0 * strength  # metres at which 5 % of the contrast is left
    transmission = np.exp(-3.0 * depth / visibility)
    fog = np.array([192, 194, 198], np.float32)
    out = image * transmission + fog * (1.0 - transmission)
    return out + rng.normal(0.0, 3.0, image.shape).astype(np.float32)


def _rain(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    out = image * (0.8 - 0.2 * strength) + 28.0  # overcast: darker and flatter
    streaks = np.zeros((height, width), np.float32)
    for _ in range(int(strength * height * width / 350)):
        x, y = rng.uniform(0, width), rng.uniform(-0.1 * height, height)
        length = rng.uniform(0.05, 0.12) * height
        angle = np.deg2rad(rng.uniform(70.0, 80.0))  # slanting with the wind
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        cv2.line(streaks, (int(x), int(y)), (int(end[0]), int(end[1])), float(rng.uniform(0.4, 1.0)), 1, cv2.LINE_AA)
    streaks = cv2.GaussianBlur(streaks, (3, 3), 0.8)[..., None]
    out = out * (1.0 - 0.45 * streaks) + 215.0 * 0.45 * streaks
    blurred = cv2.GaussianBlur(out, (0, 0), max(2.0, width / 80.0))
    drops = np.zeros((height, width), np.float32)
    for _ in range(int(2 + 5 * strength)):  # drops on the lens: round patches seen out of focus
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        cv2.circle(drops, centre, int(rng.uniform(0.03, 0.07) * height), 1.0, -1, cv2.LINE_AA)
    drops = drops[..., None]
    out = out * (1.0 - drops) + (blurred * 0.9 + 20.0) * drops
    return out + rng.normal(0.0, 4.0, image.shape).astype(np.float32)
