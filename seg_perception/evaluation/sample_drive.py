"""A deterministic synthetic Cityscapes-style drive (``make-sample-drive``).

The demo and the tests need a drive that exists without downloading Cityscapes: a street scene
rendered in perspective from a camera that moves forward, so that objects move and grow between
frames like in a real recording, with pixel-exact ground truth in Cityscapes label ids. Everything
is drawn into the image and the label map with the same polygons, so the two agree at every pixel.

The world (right-hand traffic, the camera in the right lane 1.4 m above the road):

* road with lane markings, sidewalks on both sides, terrain strips;
* building facades with windows on the left; buildings and vegetation alternating on the right;
* poles with traffic signs or traffic lights, parked cars, a lead car, an oncoming car,
  pedestrians, a cyclist (rider on a bicycle), sky, and the ego vehicle's hood (ignored in
  evaluation, as in Cityscapes).

The output is written both as a Cityscapes folder and as a drive bag made from that folder by the
converter, so the demo exercises the same path a real dataset takes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .bag_io import DEFAULT_JPEG_QUALITY, DriveBagWriter
from .cityscapes_folder import DEFAULT_RATE_HZ, cityscapes_to_bag, stamp_ns, write_pair
from .sample_styles import apply_style, check_style

# Cityscapes label ids (cityscapesScripts labels.py).
EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, POLE = 1, 7, 8, 11, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, BICYCLE = 24, 25, 26, 33

CITY = "sample"
SPLIT = "val"
#: Metres the camera advances per frame (17 m/s, about 60 km/h, at 17 Hz).
SPEED_M_PER_FRAME = 1.0
NEAR_M = 1.0
#: Draw distance: nothing further than this is drawn, so the world only needs to reach this far
#: beyond the last frame (and a short drive is the start of a long one with the same seed).
FAR_M = 80.0
ROAD_HALF_WIDTH, SIDEWALK_EDGE, RIGHT_HEDGE = 4.0, 6.5, 7.5
CAMERA_X, CAMERA_HEIGHT = 2.0, 1.4


#: Yaw in degrees (positive: turned to the right) of the camera names ``--cameras`` knows.
CAMERA_YAWS = {"front": 0.0, "front_left": -45.0, "front_right": 45.0, "left": -70.0, "right": 70.0,
               "rear_left": -120.0, "rear_right": 120.0, "rear": 180.0}


@dataclass(frozen=True)
class Camera:
    """Pinhole camera on the car, turned by ``yaw_deg`` from +z (forward); rows grow downwards."""

    height: int
    width: int
    yaw_deg: float = 0.0

    @property
    def cos_sin(self) -> tuple[float, float]:
        yaw = np.deg2rad(self.yaw_deg)
        return float(np.cos(yaw)), float(np.sin(yaw))

    def to_camera(self, rel: np.ndarray) -> np.ndarray:
        """(N, 3) offsets from the camera in world axes -> camera axes (x right, z along the view)."""
        if not self.yaw_deg:
            return rel
        c, s = self.cos_sin
        return np.stack([rel[:, 0] * c - rel[:, 2] * s, rel[:, 1], rel[:, 0] * s + rel[:, 2] * c], axis=1)

    @property
    def f(self) -> float:
        return 0.55 * self.width

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return 0.42 * self.height

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) camera-relative (x, y up from the road, z forward) -> (N, 2) pixel (u, v)."""
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        return np.stack([self.cx + self.f * x / z, self.cy + self.f * (CAMERA_HEIGHT - y) / z], axis=1)


@dataclass(frozen=True)
class Segment:
    """A stretch of roadside [z0, z1) in world metres: a building or vegetation of some height."""

    z0: float
    z1: float
    kind: int
    height: float
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Thing:
    """A box standing on the road (or lifted by ``y0``) whose rear face looks at the camera."""

    label: int
    x: float
    z: float
    width: float
    height: float
    color: tuple[int, int, int]
    depth: float = 0.0
    y0: float = 0.0
    #: Metres per frame along x and z (world frame); pedestrians walk, cars drive.
    vx: float = 0.0
    vz: float = 0.0


BUILDING_COLORS = ((150, 130, 110), (120, 100, 90), (170, 160, 140), (110, 110, 120), (140, 90, 70))
CAR_COLORS = ((20, 40, 120), (160, 20, 20), (200, 200, 205), (30, 30, 30), (90, 110, 90), (180, 150, 40))
CLOTHES = ((40, 40, 70), (90, 30, 30), (30, 70, 50), (60, 60, 60), (120, 90, 40))


class World:
    """Roadside segments and objects laid out from a seed over ``length`` metres."""

    def __init__(self, seed: int, length: float) -> None:
        # One random stream per kind of thing, so a longer drive only adds things further along:
        # the first frames of a long drive are the frames of a short one.
        streams = iter(np.random.default_rng(seed).spawn(6))
        self.left = self._segments(next(streams), length, lambda r: BUILDING)
        self.right = self._segments(next(streams), length, lambda r: BUILDING if r.random() < 0.4 else VEGETATION)
        self.things: list[Thing] = []
        rng = next(streams)
        z = 8.0
        while z < length:  # poles with a sign or a light
            side = 1 if rng.random() < 0.6 else -1
            x = CAMERA_X + side * 2.3 if side > 0 else -ROAD_HALF_WIDTH - 0.3
            self.things.append(Thing(POLE, x, z, 0.18, 6.5, (125, 125, 120)))
            if rng.random() < 0.6:
                self.things.append(Thing(TRAFFIC_SIGN, x, z - 0.05, 0.75, 0.75, (30, 70, 170), y0=2.4))
            else:
                self.things.append(Thing(TRAFFIC_LIGHT, x, z - 0.05, 0.4, 1.0, (25, 25, 25), y0=4.4))
            z += rng.uniform(14.0, 26.0)
        rng = next(streams)
        z = 10.0
        while z < length:  # parked cars along the right kerb
            if rng.random() < 0.7:
                color = CAR_COLORS[rng.integers(len(CAR_COLORS))]
                self.things.append(Thing(CAR, 3.2, z, 1.8, 1.5, color, depth=4.3))
            z += rng.uniform(7.0, 14.0)
        rng = next(streams)
        z = 6.0
        while z < length:  # pedestrians on both sidewalks
            side = rng.choice((-1.0, 1.0))
            x = side * rng.uniform(4.6, 6.0)
            color = CLOTHES[rng.integers(len(CLOTHES))]
            self.things.append(Thing(PERSON, x, z, 0.55, rng.uniform(1.6, 1.9), color,
                                     vx=-side * 0.03, vz=rng.uniform(-0.08, 0.08)))
            z += rng.uniform(5.0, 12.0)
        # A cyclist ahead on the right edge of the lane, slower than the ego car.
        self.things.append(Thing(BICYCLE, 3.0, 14.0, 0.5, 1.0, (20, 20, 20), depth=1.7, vz=0.6))
        self.things.append(Thing(RIDER, 3.0, 14.2, 0.5, 0.8, (150, 40, 40), y0=0.95, vz=0.6))
        # An oncoming car in the left lane.
        self.things.append(Thing(CAR, -2.0, 45.0, 1.8, 1.5, (200, 200, 205), depth=4.3, vz=-1.2))
        self.lead_color = CAR_COLORS[next(streams).integers(len(CAR_COLORS))]

    @staticmethod
    def _segments(rng: np.random.Generator, length: float, kind_of) -> list[Segment]:
        segments, z = [], -20.0
        while z < length + 20.0:
            kind = kind_of(rng)
            z1 = z + rng.uniform(8.0, 22.0)
            height = rng.uniform(7.0, 22.0) if kind == BUILDING else rng.uniform(3.0, 8.0)
            color = BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))] if kind == BUILDING else (60, 105, 40)
            segments.append(Segment(z, z1, kind, height, color))
            z = z1
        return segments

    def things_at(self, frame: int) -> list[Thing]:
        """Objects moved to ``frame``, plus the lead car keeping its distance ahead."""
        camera_z = frame * SPEED_M_PER_FRAME
        moved = [Thing(t.label, t.x + t.vx * frame, t.z + t.vz * frame, t.width, t.height, t.color,
                       t.depth, t.y0) for t in self.things]
        lead_gap = 12.0 + 3.0 * np.sin(frame / 7.0)
        moved.append(Thing(CAR, CAMERA_X, camera_z + lead_gap, 1.8, 1.5, self.lead_color, depth=4.3))
        return moved


def _lookup(segments: list[Segment], z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-z (kind, height, colour) of the roadside segment containing each world z."""
    starts = np.array([s.z0 for s in segments])
    idx = np.clip(np.searchsorted(starts, z, side="right") - 1, 0, len(segments) - 1)
    kinds = np.array([s.kind for s in segments])[idx]
    heights = np.array([s.height for s in segments])[idx]
    colors = np.array([s.color for s in segments], dtype=np.float32)[idx]
    return kinds, heights, colors


class Renderer:
    """Draws frames of a :class:`World` seen by a :class:`Camera`."""

    def __init__(self, world: World, camera: Camera, seed: int, style: str | None = None) -> None:
        check_style(style)
        self.world, self.camera, self.seed, self.style = world, camera, seed, style
        h, w = camera.height, camera.width
        self.rows = np.arange(h, dtype=np.float32)[:, None]
        self.cols = np.arange(w, dtype=np.float32)[None, :]

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 HxWx3, label ids uint8 HxW) of one frame."""
        cam = self.camera
        camera_z = frame * SPEED_M_PER_FRAME
        image = np.zeros((cam.height, cam.width, 3), dtype=np.float32)
        labels = np.zeros((cam.height, cam.width), dtype=np.uint8)
        self._sky(image, labels)
        self._ground(image, labels, camera_z)
        self._roadside(image, labels, camera_z, RIGHT_HEDGE, self.world.right, VEGETATION)
        self._roadside(image, labels, camera_z, SIDEWALK_EDGE, self.world.right, BUILDING)
        self._roadside(image, labels, camera_z, -SIDEWALK_EDGE, self.world.left, BUILDING)
        things = self.world.things_at(frame)
        if cam.yaw_deg:  # depth along this camera's view; the near plane clips what is beside it
            c, s = cam.cos_sin
            depth = {id(t): (t.x - CAMERA_X) * s + (t.z - camera_z) * c for t in things}
            things = [t for t in things if -10.0 < depth[id(t)] < FAR_M]
            things.sort(key=lambda t: depth[id(t)], reverse=True)  # painter's order
        else:
            things = sorted((t for t in things if NEAR_M < t.z - camera_z < FAR_M), key=lambda t: t.z,
                            reverse=True)
        for thing in things:
            self._thing(image, labels, thing, camera_z)
        self._hood(image, labels)
        if self.style is not None:  # light, weather and sensor; the labels stay as they are
            image = apply_style(image, self.style, self.seed, frame, cam.cy, cam.f * CAMERA_HEIGHT, labels == SKY)
        rng = np.random.default_rng((self.seed, frame))
        image += rng.normal(0.0, 5.0, image.shape).astype(np.float32)
        image = cv2.GaussianBlur(image, (3, 3), 0.6)
        return np.clip(image, 0, 255).astype(np.uint8), labels

    def _sky(self, image: np.ndarray, labels: np.ndarray) -> None:
        t = np.clip(self.rows / self.camera.cy, 0.0, 1.0)[..., None]
        top, horizon = np.array([110, 160, 215], np.float32), np.array([205, 220, 232], np.float32)
        image[:] = top * (1 - t) + horizon * t
        labels[:] = SKY

    def _ground(self, image: np.ndarray, labels: np.ndarray, camera_z: float) -> None:
        cam = self.camera
        below = self.rows > cam.cy + 0.5
        z = np.where(below, cam.f * CAMERA_HEIGHT / np.maximum(self.rows - cam.cy, 0.5), 1e6)
        x = CAMERA_X + (self.cols - cam.cx) * z / cam.f
        zw = z + camera_z
        if cam.yaw_deg:  # the ground point seen by each pixel, turned into world axes
            c, s = cam.cos_sin
            xc = x - CAMERA_X
            x, zw = CAMERA_X + xc * c + z * s, -xc * s + z * c + camera_z
        ax = np.abs(x)
        shade = np.clip(1.0 - z / 300.0, 0.6, 1.0)[..., None]
        ground = np.broadcast_to(below, labels.shape)
        road = ground & (ax < ROAD_HALF_WIDTH)
        side = ground & ~road & ((ax < SIDEWALK_EDGE) | (x < 0))
        terrain = ground & ~road & ~side
        marking = road & (((np.abs(x) < 0.08) & (np.mod(zw, 9.0) < 3.0)) | (np.abs(ax - 3.8) < 0.08))
        paving = side & (np.mod(zw, 1.2) < 0.06)
        for mask, label, color in ((road, ROAD, (88, 88, 94)), (side, SIDEWALK, (160, 152, 146)),
                                   (terrain, TERRAIN, (110, 145, 70))):
            image[mask] = np.broadcast_to(np.array(color, np.float32) * shade, image.shape)[mask]
            labels[mask] = label
        image[marking] = 225.0
        image[paving] *= 0.8

    def _roadside(self, image: np.ndarray, labels: np.ndarray, camera_z: float, plane_x: float,
                  segments: list[Segment], kind: int) -> None:
        """Facades (buildings) or hedges/trees (vegetation) on the vertical plane x = plane_x."""
        cam = self.camera
        dx = plane_x - CAMERA_X
        du = self.cols[0] - cam.cx
        with np.errstate(divide="ignore", invalid="ignore"):
            if cam.yaw_deg:  # the view ray of each column, in world axes, meets the plane
                c, s = cam.cos_sin
                dxw, dzw = du * c + cam.f * s, -du * s + cam.f * c
                t = np.where(dxw * dx > 0, dx / dxw, -1.0)
                z, zw = t * cam.f, t * dzw + camera_z
            else:
                z = np.where(du * dx > 0, cam.f * dx / du, -1.0)
                zw = z + camera_z
        valid = (z > NEAR_M) & (z < FAR_M)
        kinds, heights, colors = _lookup(segments, zw)
        if kind == VEGETATION:
            heights = heights + 1.2 * np.sin(zw * 0.9) + 0.6 * np.sin(zw * 2.3)
        valid &= kinds == kind
        top = cam.cy - cam.f * (heights - CAMERA_HEIGHT) / np.where(valid, z, 1.0)
        bottom = cam.cy + cam.f * CAMERA_HEIGHT / np.where(valid, z, 1.0)
        mask = valid[None, :] & (self.rows >= top[None, :]) & (self.rows < bottom[None, :])
        if not mask.any():
            return
        zz = np.broadcast_to(z[None, :], mask.shape)
        y = CAMERA_HEIGHT + (cam.cy - self.rows) * zz / cam.f  # height above the road
        base = np.broadcast_to(colors[None, :, :], image.shape)
        image[mask] = base[mask]
        labels[mask] = kind
        zwb = np.broadcast_to(zw[None, :], mask.shape)
        if kind == BUILDING:
            hb = np.broadcast_to(heights[None, :], mask.shape)
            window = (mask & (np.mod(zwb, 2.5) > 0.7) & (np.mod(zwb, 2.5) < 1.9) & (np.mod(y, 3.0) > 1.0)
                      & (np.mod(y, 3.0) < 2.2) & (y > 2.5) & (y < hb - 0.8))
            image[window] = (45, 55, 70)
        else:
            texture = 0.75 + 0.25 * np.sin(zwb * 7.0) * np.sin(y * 9.0)
            image[mask] *= texture[mask][:, None]

    def _poly(self, image: np.ndarray, labels: np.ndarray, points: np.ndarray, camera_z: float,
              color: tuple[int, ...], label: int) -> None:
        """Fill a world-space polygon (clipped at the near plane) into image and labels."""
        rel = self.camera.to_camera(points - np.array([CAMERA_X, 0.0, camera_z]))
        rel = _clip_near(rel, NEAR_M)
        if len(rel) < 3:
            return
        pix = np.round(self.camera.project(rel) * 16).astype(np.int32)
        pix = np.clip(pix, -(2**20), 2**20)
        cv2.fillPoly(image, [pix], tuple(float(c) for c in color), lineType=cv2.LINE_8, shift=4)
        cv2.fillPoly(labels, [pix], int(label), lineType=cv2.LINE_8, shift=4)

    def _thing(self, image: np.ndarray, labels: np.ndarray, t: Thing, camera_z: float) -> None:
        x0, x1, y0, y1 = t.x - t.width / 2, t.x + t.width / 2, t.y0, t.y0 + t.height
        if t.depth > 0:  # the side facing the camera, drawn first (it is behind the rear face)
            sx = x0 if t.x > CAMERA_X else x1
            side = np.array([(sx, y0, t.z), (sx, y1, t.z), (sx, y1, t.z + t.depth), (sx, y0, t.z + t.depth)])
            self._poly(image, labels, side, camera_z, tuple(0.7 * c for c in t.color), t.label)
        if t.label == PERSON:
            self._person(image, labels, t, camera_z)
            return
        if t.label == BICYCLE:
            for wx in (t.z, t.z + t.depth):  # two wheels as thin diamonds seen from behind
                wheel = np.array([(t.x - 0.05, 0.0, wx), (t.x + 0.05, 0.0, wx), (t.x + 0.05, 0.7, wx),
                                  (t.x - 0.05, 0.7, wx)])
                self._poly(image, labels, wheel, camera_z, t.color, t.label)
        rear = np.array([(x0, y0, t.z), (x1, y0, t.z), (x1, y1, t.z), (x0, y1, t.z)])
        self._poly(image, labels, rear, camera_z, t.color, t.label)
        if t.label == CAR:  # rear window and lights: same label, different colour
            window = np.array([(x0 + 0.2, 1.05, t.z), (x1 - 0.2, 1.05, t.z), (x1 - 0.3, 1.4, t.z),
                               (x0 + 0.3, 1.4, t.z)])
            self._poly(image, labels, window, camera_z, (35, 45, 60), CAR)
            for lx in (x0 + 0.1, x1 - 0.35):
                light = np.array([(lx, 0.75, t.z), (lx + 0.25, 0.75, t.z), (lx + 0.25, 0.9, t.z),
                                  (lx, 0.9, t.z)])
                self._poly(image, labels, light, camera_z, (200, 30, 30), CAR)
        elif t.label == TRAFFIC_SIGN:
            inner = np.array([(x0 + 0.1, y0 + 0.1, t.z - 0.01), (x1 - 0.1, y0 + 0.1, t.z - 0.01),
                              (x1 - 0.1, y1 - 0.1, t.z - 0.01), (x0 + 0.1, y1 - 0.1, t.z - 0.01)])
            self._poly(image, labels, inner, camera_z, (235, 235, 235), TRAFFIC_SIGN)
        elif t.label == TRAFFIC_LIGHT:
            lamp = np.array([(x0 + 0.08, y1 - 0.32, t.z - 0.01), (x1 - 0.08, y1 - 0.32, t.z - 0.01),
                             (x1 - 0.08, y1 - 0.08, t.z - 0.01), (x0 + 0.08, y1 - 0.08, t.z - 0.01)])
            self._poly(image, labels, lamp, camera_z, (230, 40, 30), TRAFFIC_LIGHT)

    def _person(self, image: np.ndarray, labels: np.ndarray, t: Thing, camera_z: float) -> None:
        """Legs, torso and head, so people are not boxes."""
        h, w, z = t.height, t.width, t.z
        legs = np.array([(t.x - w * 0.35, 0.0, z), (t.x + w * 0.35, 0.0, z), (t.x + w * 0.3, h * 0.47, z),
                         (t.x - w * 0.3, h * 0.47, z)])
        torso = np.array([(t.x - w / 2, h * 0.45, z), (t.x + w / 2, h * 0.45, z), (t.x + w * 0.45, h * 0.85, z),
                          (t.x - w * 0.45, h * 0.85, z)])
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        r = 0.12 * h / 1.75
        head = np.stack([t.x + r * np.cos(angles), h * 0.92 + r * np.sin(angles), np.full(12, z)], axis=1)
        self._poly(image, labels, legs, camera_z, (40, 40, 45), t.label)
        self._poly(image, labels, torso, camera_z, t.color, t.label)
        self._poly(image, labels, head, camera_z, (205, 160, 130), t.label)

    def _hood(self, image: np.ndarray, labels: np.ndarray) -> None:
        """The ego car's bonnet at the bottom of the frame (ignored in evaluation)."""
        cam = self.camera
        centre = (int(cam.cx), int(cam.height * 1.55))
        axes = (int(cam.width * 0.75), int(cam.height * 0.64))
        cv2.ellipse(image, centre, axes, 0, 0, 360, (35, 35, 40), -1)
        cv2.ellipse(labels, centre, axes, 0, 0, 360, EGO_VEHICLE, -1)


def _clip_near(points: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to z >= near."""
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def render_drive(frames: int, height: int, width: int, seed: int = 0, yaw_deg: float = 0.0,
                 style: str | None = None):
    """Yield (RGB, label ids) for each frame of the drive, seen by a camera turned by ``yaw_deg``,
    in a shifted domain ``style`` (:mod:`.sample_styles`; None: the clear day)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16, got {height}x{width}")
    world = World(seed, frames * SPEED_M_PER_FRAME + FAR_M + 10.0)
    renderer = Renderer(world, Camera(height, width, yaw_deg), seed, style)
    for i in range(frames):
        yield renderer.render(i)


def parse_cameras(text: str) -> list[tuple[str, float]]:
    """``front,left,right`` or ``front,side=30`` -> [(name, yaw degrees)]; known names need no yaw."""
    cameras: list[tuple[str, float]] = []
    for item in (part.strip() for part in text.split(",")):
        name, _, yaw = item.partition("=")
        if not name.isidentifier():
            raise ValueError(f"camera name {name[:40]!r} must be a valid ROS name (letters, digits, _)")
        if yaw:
            try:
                cameras.append((name, float(yaw)))
            except ValueError:
                raise ValueError(f"camera {name}: yaw {yaw[:40]!r} is not a number of degrees") from None
        elif name in CAMERA_YAWS:
            cameras.append((name, CAMERA_YAWS[name]))
        else:
            raise ValueError(f"camera {name!r} has no default yaw; give one as {name}=DEGREES or use one of "
                             f"{', '.join(CAMERA_YAWS)}")
    if len({n for n, _ in cameras}) != len(cameras):
        raise ValueError(f"duplicate camera in {text[:200]!r}")
    return cameras


@dataclass(frozen=True)
class SampleDrive:
    root: Path
    cityscapes: Path
    bag: Path
    frames: int


def stem(index: int) -> str:
    return f"{CITY}_000000_{index:06d}"


def make_sample_drive(out: str | Path, frames: int = 32, size: tuple[int, int] = (256, 512), seed: int = 0,
                      storage: str = "sqlite3", rate_hz: float = DEFAULT_RATE_HZ,
                      progress: bool = True, cameras: Sequence[tuple[str, float]] | None = None,
                      compressed: str | None = None, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                      style: str | None = None) -> SampleDrive:
    """Render the drive into ``out/cityscapes`` (Cityscapes layout) and convert it to ``out/bag``.

    ``out`` must not exist or be a sample drive written before (it is then replaced), so that a
    typo cannot delete an unrelated folder. ``cameras`` [(name, yaw degrees)] renders the same
    street from each camera with the same stamps: one Cityscapes "city" per camera and, in the
    bag, ``/<name>/image_raw`` with ``/<name>/semantic_gt`` per camera. ``compressed`` (jpeg/png)
    stores the bag's images as CompressedImage. ``style`` (dusk/fog/rain) renders the same street
    and ground truth in a shifted domain (:mod:`.sample_styles`).
    """
    check_style(style)
    out = Path(out)
    marker = out / ".sample_drive"
    if out.exists():
        if not marker.exists():
            raise FileExistsError(f"{out} exists and is not a sample drive; choose another output folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.write_text(f"frames={frames} size={size[0]}x{size[1]} seed={seed} cameras={cameras} style={style}\n")
    cityscapes = out / "cityscapes"
    bag = out / "bag"
    if cameras is None:
        loop = enumerate(render_drive(frames, size[0], size[1], seed, style=style))
        if progress:
            from tqdm import tqdm

            loop = tqdm(loop, total=frames, desc="render sample drive", unit="frame")
        for index, (rgb, label_ids) in loop:
            write_pair(cityscapes, SPLIT, CITY, stem(index), rgb, label_ids)
        cityscapes_to_bag(cityscapes, SPLIT, bag, storage=storage, rate_hz=rate_hz, progress=progress,
                          compressed=compressed, jpeg_quality=jpeg_quality)
    else:
        _render_cameras(cityscapes, bag, frames, size, seed, storage, rate_hz, progress, cameras, compressed,
                        jpeg_quality, style)
    return SampleDrive(out, cityscapes, bag, frames)


def _render_cameras(cityscapes: Path, bag: Path, frames: int, size: tuple[int, int], seed: int, storage: str,
                    rate_hz: float, progress: bool, cameras: Sequence[tuple[str, float]],
                    compressed: str | None, jpeg_quality: int, style: str | None = None) -> None:
    """Every camera's view of each frame, written to the folder and, with shared stamps, the bag."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    world = World(seed, frames * SPEED_M_PER_FRAME + FAR_M + 10.0)
    renderers = [(name, Renderer(world, Camera(size[0], size[1], yaw), seed, style)) for name, yaw in cameras]
    loop = range(frames)
    if progress:
        from tqdm import tqdm

        loop = tqdm(loop, desc=f"render sample drive ({len(cameras)} cameras)", unit="frame")
    with DriveBagWriter(bag, storage, cameras=[n for n, _ in cameras], compressed=compressed,
                        jpeg_quality=jpeg_quality) as writer:
        for index in loop:
            for name, renderer in renderers:
                rgb, label_ids = renderer.render(index)
                write_pair(cityscapes, SPLIT, name, f"{name}_000000_{index:06d}", rgb, label_ids)
                writer.write(stamp_ns(index, rate_hz), name, rgb, label_ids, camera=name)
