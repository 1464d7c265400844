"""Procedural layout of one driving scene: a straight street built from analytic primitives.

Every primitive carries its nuScenes lidarseg category (raw ``category.json`` index), a finer SemanticKITTI raw
id (a pole, a sign, a tree trunk and a lane marking are ``static.manmade`` / ``static.vegetation`` /
``flat.driveable_surface`` in nuScenes but have their own SemanticKITTI ids), an instance id, two colours, a
texture and a lidar reflectivity. Objects of one class vary in size, colour and texture.

The street runs along +x of the *street frame* (z up, ground at z = 0); the ego vehicle drives along it in its
lane. The scene's global frame is the street frame turned by ``heading`` and moved by ``map_offset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidr.data.classes import NUSCENES_CATEGORY_INDEX
from slidr.data.synth.raycast import BOX, CONE, CYLINDER, ELLIPSOID, Grid, build_grid

# Textures (see slidr.data.synth.render); ``tex`` parameters are given per texture below.
(TEX_PLAIN, TEX_ASPHALT, TEX_PAINT, TEX_TILES, TEX_COBBLE, TEX_GRASS, TEX_FACADE, TEX_FOLIAGE, TEX_BARK,
 TEX_STRIPES, TEX_VEHICLE, TEX_CONE, TEX_CLOTHES, TEX_HAZARD, TEX_RIBS, TEX_HEAD) = range(16)

# SemanticKITTI raw ids of the synthetic parts (slidr.data.classes.SEMANTICKITTI_RAW_LABELS)
KITTI_OUTLIER, KITTI_CAR, KITTI_BICYCLE, KITTI_BUS, KITTI_MOTORCYCLE, KITTI_TRUCK, KITTI_OTHER_VEHICLE = (
    1, 10, 11, 13, 15, 18, 20)
KITTI_PERSON, KITTI_ROAD, KITTI_PARKING, KITTI_SIDEWALK, KITTI_OTHER_GROUND, KITTI_BUILDING, KITTI_FENCE = (
    30, 40, 44, 48, 49, 50, 51)
KITTI_LANE_MARKING, KITTI_VEGETATION, KITTI_TRUNK, KITTI_TERRAIN, KITTI_POLE, KITTI_SIGN, KITTI_OTHER_OBJECT = (
    60, 70, 71, 72, 80, 81, 99)

LOCATIONS = {
    "boston-seaport": ("boston", "n008", "-0400"),
    "singapore-onenorth": ("singapore", "n015", "+0800"),
    "singapore-queenstown": ("singapore", "n015", "+0800"),
    "singapore-hollandvillage": ("singapore", "n015", "+0800"),
}

KEYFRAME_INTERVAL_S = 0.5  # nuScenes keyframes are at 2 Hz
MARGIN_M = 90.0  # street beyond the ego path at both ends (lidar range is 70 m)


@dataclass(frozen=True)
class SceneConditions:
    """Everything random about a scene that is decided before its layout: where, when, weather, content."""

    index: int
    name: str
    seed: int
    location: str
    rain: bool
    night: bool
    construction: bool
    traffic: float  # 0..1, how many vehicles
    pedestrians: float  # 0..1, how many people
    speed: float  # ego speed, m/s
    heading: float  # street direction in the global frame, radians
    map_offset: tuple[float, float]
    sun_azimuth: float
    sun_elevation: float
    start_timestamp: int  # microseconds
    description: str

    @property
    def city(self) -> str:
        return LOCATIONS[self.location][0]

    @property
    def left_hand_traffic(self) -> bool:
        return self.city == "singapore"

    @property
    def logfile(self) -> str:
        _, vehicle, zone = LOCATIONS[self.location]
        date = _timestamp_date(self.start_timestamp)
        return f"{vehicle}-{date}-{10 + self.index % 9:02d}-{(self.index * 7) % 60:02d}-00{zone}"

    @property
    def vehicle(self) -> str:
        return LOCATIONS[self.location][1]

    @property
    def date_captured(self) -> str:
        return _timestamp_date(self.start_timestamp)


def _timestamp_date(timestamp_us: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp_us / 1e6, tz=datetime.UTC).strftime("%Y-%m-%d")


def plan_scenes(num_scenes: int, seed: int) -> list[SceneConditions]:
    """Conditions of ``num_scenes`` scenes, deterministic for ``seed``.

    With four or more scenes at least one is rainy and one at night; with two or more both cities appear.
    The first scene always has a construction zone (so every evaluation class appears in small worlds too).
    """
    rng = np.random.default_rng([seed, 0x5C3E])
    rain = rng.random(num_scenes) < 0.25
    night = rng.random(num_scenes) < 0.2
    if num_scenes >= 4:
        if not rain.any():
            rain[num_scenes // 2] = True
        if not night.any():
            night[num_scenes - 1] = True
    locations = list(LOCATIONS)
    location = [locations[0] if rng.random() < 0.5 else locations[int(rng.integers(1, 4))]
                for _ in range(num_scenes)]
    if num_scenes >= 2 and len({LOCATIONS[name][0] for name in location}) == 1:
        location[1] = locations[1] if LOCATIONS[location[0]][0] == "boston" else locations[0]
    scenes = []
    base_timestamp = 1531281439000000 + int(rng.integers(0, 10**12))
    for i in range(num_scenes):
        construction = i == 0 or bool(rng.random() < 0.5)
        traffic = float(rng.uniform(0.3, 1.0))
        pedestrians = float(rng.uniform(0.2, 1.0))
        scene_seed = int(rng.integers(0, 2**31))
        words = []
        if night[i]:
            words.append("Night")
        if rain[i]:
            words.append("Rain")
        words.append("heavy traffic" if traffic > 0.7 else "light traffic")
        if construction:
            words.append("construction zone")
        words.append("peds on sidewalk" if pedestrians > 0.5 else "few peds")
        words.append("parked cars")
        words.append("buses" if rng.random() < 0.5 else "trucks")
        description = ", ".join(words)
        description = description[0].upper() + description[1:]
        scenes.append(SceneConditions(
            index=i,
            name=f"scene-{i + 1:04d}",
            seed=scene_seed,
            location=location[i],
            rain=bool(rain[i]),
            night=bool(night[i]),
            construction=construction,
            traffic=traffic,
            pedestrians=pedestrians,
            speed=float(rng.uniform(3.0, 9.0)),
            heading=float(rng.uniform(-math.pi, math.pi)),
            map_offset=(float(rng.uniform(300, 2000)), float(rng.uniform(300, 2000))),
            sun_azimuth=float(rng.uniform(0, 2 * math.pi)),
            sun_elevation=float(rng.uniform(math.radians(25), math.radians(65))),
            start_timestamp=base_timestamp + i * 3_600_000_000 + int(rng.integers(0, 10**9)),
            description=description,
        ))
    return scenes


@dataclass
class World:
    """The primitives of one scene (street frame) and their materials; ``grid`` culls them for ray casting."""

    kinds: np.ndarray  # (P,) int32
    params: np.ndarray  # (P, 8) float64
    category: np.ndarray  # (P,) uint8 nuScenes raw category index
    part: np.ndarray  # (P,) uint16 SemanticKITTI raw id
    instance: np.ndarray  # (P,) int32, 0 for stuff
    color: np.ndarray  # (P, 3) float32 in [0, 1]
    color2: np.ndarray  # (P, 3) float32
    texture: np.ndarray  # (P,) int32
    tex: np.ndarray  # (P, 2) float32 texture parameters
    reflectivity: np.ndarray  # (P,) float32 in [0, 1]
    grid: Grid
    ego_lane_y: float
    street_to_global: np.ndarray = field(default_factory=lambda: np.eye(4))
    road_half_width: float = 0.0  # the road spans |y| <= road_half_width (street frame)
    parking_width: float = 0.0  # parking strips along both road edges (0: none)


class _Builder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.next_instance = 1

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def add(self, kind: int, centre, half, yaw: float, category: str, part: int, color, color2=None,
            texture: int = TEX_PLAIN, tex=(0.0, 0.0), reflectivity: float = 0.3, instance: int = 0) -> None:
        color = np.clip(np.asarray(color, dtype=np.float64), 0.0, 1.0)
        color2 = color if color2 is None else np.clip(np.asarray(color2, dtype=np.float64), 0.0, 1.0)
        self.rows.append((kind, tuple(centre), tuple(half), yaw, NUSCENES_CATEGORY_INDEX[category], part,
                          instance, tuple(color), tuple(color2), texture, tuple(tex), reflectivity))

    def add_local(self, kind: int, anchor, yaw: float, offset, half, **material) -> None:
        """Add a part given in an object's frame: ``offset`` (forward, left, up) from ``anchor`` (x, y[, z])."""
        cos, sin = math.cos(yaw), math.sin(yaw)
        z0 = anchor[2] if len(anchor) > 2 else 0.0
        centre = (anchor[0] + offset[0] * cos - offset[1] * sin, anchor[1] + offset[0] * sin + offset[1] * cos,
                  z0 + offset[2])
        self.add(kind, centre, half, yaw, **material)

    def build(self, ego_lane_y: float, street_to_global: np.ndarray, road_half_width: float = 0.0,
              parking_width: float = 0.0) -> World:
        kinds = np.array([row[0] for row in self.rows], dtype=np.int32)
        yaw = np.array([row[3] for row in self.rows])
        params = np.concatenate([np.array([row[1] for row in self.rows]), np.array([row[2] for row in self.rows]),
                                 np.cos(yaw)[:, None], np.sin(yaw)[:, None]], axis=1)
        return World(
            kinds=kinds,
            params=np.ascontiguousarray(params, dtype=np.float64),
            category=np.array([row[4] for row in self.rows], dtype=np.uint8),
            part=np.array([row[5] for row in self.rows], dtype=np.uint16),
            instance=np.array([row[6] for row in self.rows], dtype=np.int32),
            color=np.array([row[7] for row in self.rows], dtype=np.float32),
            color2=np.array([row[8] for row in self.rows], dtype=np.float32),
            texture=np.array([row[9] for row in self.rows], dtype=np.int32),
            tex=np.array([row[10] for row in self.rows], dtype=np.float32),
            reflectivity=np.array([row[11] for row in self.rows], dtype=np.float32),
            grid=build_grid(kinds, params),
            ego_lane_y=ego_lane_y,
            street_to_global=street_to_global,
            road_half_width=road_half_width,
            parking_width=parking_width,
        )


def _jitter(rng: np.random.Generator, color, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(color) * rng.uniform(1 - amount * 2, 1 + amount * 2) + rng.normal(0, amount, 3), 0, 1)


def _pick(rng: np.random.Generator, palette) -> np.ndarray:
    return np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float64)


CAR_PAINT = [(0.92, 0.92, 0.9), (0.08, 0.08, 0.09), (0.62, 0.63, 0.66), (0.38, 0.39, 0.41), (0.62, 0.07, 0.07),
             (0.1, 0.2, 0.55), (0.12, 0.3, 0.18), (0.75, 0.68, 0.52), (0.85, 0.7, 0.1), (0.35, 0.12, 0.4)]
WINDOW_TINT = [(0.1, 0.12, 0.16), (0.15, 0.2, 0.26), (0.06, 0.07, 0.08), (0.2, 0.26, 0.3)]
FACADES = [(0.6, 0.28, 0.2), (0.78, 0.7, 0.56), (0.55, 0.55, 0.57), (0.88, 0.86, 0.82), (0.35, 0.45, 0.55),
           (0.7, 0.5, 0.35), (0.45, 0.4, 0.38), (0.82, 0.78, 0.65)]
GREENS = [(0.16, 0.36, 0.12), (0.22, 0.42, 0.14), (0.12, 0.28, 0.1), (0.3, 0.45, 0.16), (0.2, 0.33, 0.2)]
CLOTHES = [(0.1, 0.1, 0.12), (0.15, 0.2, 0.45), (0.6, 0.1, 0.12), (0.85, 0.85, 0.82), (0.35, 0.35, 0.3),
           (0.2, 0.4, 0.25), (0.7, 0.55, 0.3), (0.5, 0.3, 0.55), (0.9, 0.6, 0.1)]
SKIN = [(0.93, 0.76, 0.62), (0.8, 0.6, 0.45), (0.55, 0.38, 0.26), (0.36, 0.24, 0.16)]
HAIR = [(0.05, 0.04, 0.03), (0.3, 0.2, 0.1), (0.6, 0.5, 0.3), (0.5, 0.5, 0.5)]
SIGN_COLORS = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.95, 0.95, 0.95), (0.95, 0.8, 0.1), (0.1, 0.5, 0.25)]
BRIGHT = [(0.85, 0.15, 0.1), (0.1, 0.4, 0.8), (0.1, 0.65, 0.3), (0.9, 0.75, 0.1), (0.95, 0.95, 0.95),
          (0.1, 0.1, 0.1), (0.6, 0.2, 0.6)]


class _Lanes:
    """Occupied stretches along each lane or parking strip, so that parked and waiting vehicles never overlap."""

    def __init__(self) -> None:
        self.taken: dict[float, list[tuple[float, float]]] = {}

    def free(self, y: float, x0: float, x1: float) -> bool:
        return all(x1 < a or x0 > b for a, b in self.taken.get(y, []))

    def take(self, y: float, x0: float, x1: float) -> None:
        self.taken.setdefault(y, []).append((x0, x1))


@dataclass
class _Street:
    x_lo: float
    x_hi: float
    median: float  # half width of the median strip (0: none)
    lane_width: float
    lanes: int  # per direction
    parking: float  # width of the parking strip at each road edge (0: none)
    road: float  # half width of the road
    sidewalk: tuple[float, float]  # widths, right (y < 0) and left (y > 0)
    band: tuple[float, float]  # width of the verge between sidewalk and buildings
    ego_lane_y: float
    travel: float

    def lane_centres(self) -> list[tuple[float, float]]:
        """(y, driving direction yaw) of every traffic lane."""
        out = []
        for k in range(self.lanes):
            y = self.median + self.lane_width * (k + 0.5)
            out += [(-y, 0.0), (y, math.pi)]
        return out


def build_world(conditions: SceneConditions, frames: int) -> World:
    """Lay out the scene of ``conditions`` for an ego drive of ``frames`` keyframes.

    Parameters
    ----------
    conditions : SceneConditions
    frames : int, number of keyframes (the street is long enough for the drive plus ``MARGIN_M`` each end).

    Returns
    -------
    World
    """
    rng = np.random.default_rng([conditions.seed, 1])
    travel = conditions.speed * KEYFRAME_INTERVAL_S * max(frames - 1, 0)
    lanes = int(rng.integers(1, 3))
    median = float(rng.uniform(0.8, 1.6)) if lanes == 2 and rng.random() < 0.5 else 0.0
    lane_width = float(rng.uniform(3.2, 3.7))
    parking = float(rng.uniform(2.2, 2.6)) if rng.random() < 0.7 else 0.0
    road = median + lanes * lane_width + parking
    side = 1.0 if conditions.left_hand_traffic else -1.0
    street = _Street(
        x_lo=-MARGIN_M, x_hi=travel + MARGIN_M, median=median, lane_width=lane_width, lanes=lanes,
        parking=parking, road=road, sidewalk=(float(rng.uniform(2.0, 4.5)), float(rng.uniform(2.0, 4.5))),
        band=(float(rng.uniform(2.0, 7.0)), float(rng.uniform(2.0, 7.0))),
        ego_lane_y=side * (median + lane_width * 0.5), travel=travel)
    b = _Builder()
    lanes_taken = _Lanes()
    _ground(b, rng, street)
    _lane_markings(b, rng, street, conditions)
    _buildings(b, rng, street, conditions)
    _vegetation(b, rng, street)
    _street_furniture(b, rng, street)
    if conditions.construction:
        _construction_zone(b, rng, street, lanes_taken, conditions)
    _traffic(b, rng, street, lanes_taken, conditions)
    _people(b, rng, street, conditions)
    heading = conditions.heading
    street_to_global = np.eye(4)
    street_to_global[:2, :2] = [[math.cos(heading), -math.sin(heading)], [math.sin(heading), math.cos(heading)]]
    street_to_global[:2, 3] = conditions.map_offset
    return b.build(street.ego_lane_y, street_to_global, street.road, street.parking)


# ---------------------------------------------------------------------------------------------------------------
# Stuff: ground, markings, buildings, vegetation, poles and signs.
# ---------------------------------------------------------------------------------------------------------------


def _strip(b: _Builder, x0: float, x1: float, y0: float, y1: float, z_top: float, chunk: float = 12.0,
           **material) -> None:
    """A flat strip cut into chunks along x (short primitives keep the culling grid effective)."""
    n = max(1, int(math.ceil((x1 - x0) / chunk)))
    edges = np.linspace(x0, x1, n + 1)
    for a, c in zip(edges[:-1], edges[1:]):
        b.add(BOX, ((a + c) / 2, (y0 + y1) / 2, z_top - 0.25), ((c - a) / 2, abs(y1 - y0) / 2, 0.25), 0.0,
              **material)


def _ground(b: _Builder, rng: np.random.Generator, s: _Street) -> None:
    asphalt = _jitter(rng, (0.24, 0.24, 0.25), 0.04)
    road: dict[str, Any] = dict(category="flat.driveable_surface", part=KITTI_ROAD, color=asphalt, color2=asphalt * 0.7,
                texture=TEX_ASPHALT, reflectivity=0.12)
    _strip(b, s.x_lo, s.x_hi, -s.road, s.road, 0.0, **road)
    if s.median > 0:
        _strip(b, s.x_lo, s.x_hi, -s.median, s.median, 0.14, category="flat.other", part=KITTI_OTHER_GROUND,
               color=_jitter(rng, (0.62, 0.58, 0.5)), color2=(0.35, 0.33, 0.3), texture=TEX_COBBLE,
               tex=(0.4, 0.0), reflectivity=0.3)
    far = s.road + max(s.sidewalk) + max(s.band) + 60.0
    b.add(BOX, ((s.x_lo + s.x_hi) / 2, 0.0, -0.35), ((s.x_hi - s.x_lo) / 2 + 12, far, 0.3), 0.0,
          category="flat.terrain", part=KITTI_TERRAIN, color=_jitter(rng, (0.3, 0.38, 0.18)),
          color2=(0.42, 0.36, 0.22), texture=TEX_GRASS, reflectivity=0.25)
    for sign, width, band in ((-1, s.sidewalk[0], s.band[0]), (1, s.sidewalk[1], s.band[1])):
        tile = _jitter(rng, _pick(rng, [(0.68, 0.66, 0.62), (0.6, 0.6, 0.6), (0.72, 0.64, 0.55)]), 0.04)
        _strip(b, s.x_lo, s.x_hi, sign * s.road, sign * (s.road + width), 0.15, category="flat.sidewalk",
               part=KITTI_SIDEWALK, color=tile, color2=tile * 0.7, texture=TEX_TILES,
               tex=(float(rng.uniform(0.3, 0.6)), 0.0), reflectivity=0.3)
        x = s.x_lo
        y0 = sign * (s.road + width)
        while x < s.x_hi:
            length = min(float(rng.uniform(10, 30)), s.x_hi - x)
            if rng.random() < 0.6:
                _strip(b, x, x + length, y0, y0 + sign * band, 0.08, category="flat.terrain", part=KITTI_TERRAIN,
                       color=_jitter(rng, _pick(rng, GREENS), 0.05), color2=_jitter(rng, (0.45, 0.38, 0.2)),
                       texture=TEX_GRASS, reflectivity=0.25)
            else:
                paved = _jitter(rng, _pick(rng, [(0.58, 0.36, 0.28), (0.55, 0.53, 0.48), (0.45, 0.42, 0.4)]))
                _strip(b, x, x + length, y0, y0 + sign * band, 0.05, category="flat.other",
                       part=KITTI_PARKING if rng.random() < 0.3 else KITTI_OTHER_GROUND, color=paved,
                       color2=paved * 0.6, texture=TEX_COBBLE, tex=(float(rng.uniform(0.25, 0.5)), 0.0),
                       reflectivity=0.28)
            x += length


def _lane_markings(b: _Builder, rng: np.random.Generator, s: _Street, c: SceneConditions) -> None:
    white = (0.9, 0.9, 0.88)
    centre = (0.9, 0.75, 0.15) if c.city == "boston" else white
    paint: dict[str, Any] = dict(category="flat.driveable_surface", part=KITTI_LANE_MARKING, texture=TEX_PAINT,
                                 reflectivity=0.8)
    lines: list[tuple[float, bool, tuple]] = []  # (y, dashed, colour)
    if s.median == 0:
        lines.append((0.0, s.lanes == 1 and rng.random() < 0.5, centre))
    for k in range(1, s.lanes):
        y = s.median + k * s.lane_width
        lines += [(y, True, white), (-y, True, white)]
    edge = s.median + s.lanes * s.lane_width
    lines += [(edge, False, white), (-edge, False, white)]
    for y, dashed, color in lines:
        if dashed:
            period, dash = float(rng.uniform(8, 12)), 3.0
            for x in np.arange(s.x_lo, s.x_hi - dash, period):
                b.add(BOX, (x + dash / 2, y, 0.005), (dash / 2, 0.075, 0.01), 0.0, color=color, **paint)
        else:
            _strip(b, s.x_lo, s.x_hi, y - 0.075, y + 0.075, 0.01, color=color, **paint)
    # a zebra crossing ahead of the drive
    x = s.travel + float(rng.uniform(20, 45))
    for y in np.arange(-s.road + 0.5, s.road - 0.5, 1.0):
        b.add(BOX, (x, y + 0.25, 0.005), (2.0, 0.25, 0.01), 0.0, color=white, **paint)


def _buildings(b: _Builder, rng: np.random.Generator, s: _Street, c: SceneConditions) -> None:
    tall = 1.6 if c.city == "singapore" else 1.0
    for sign, width, band in ((-1, s.sidewalk[0], s.band[0]), (1, s.sidewalk[1], s.band[1])):
        front = s.road + width + band
        x = s.x_lo - 5
        while x < s.x_hi + 5:
            length = float(rng.uniform(8, 28))
            if rng.random() < 0.8:
                depth = float(rng.uniform(8, 22))
                height = float(rng.uniform(5, 22)) * tall
                setback = float(rng.uniform(0, 1.5))
                y = sign * (front + setback + depth / 2)
                facade = _jitter(rng, _pick(rng, FACADES), 0.05)
                window = _jitter(rng, _pick(rng, WINDOW_TINT + [(0.3, 0.4, 0.5), (0.5, 0.55, 0.6)]), 0.04)
                b.add(BOX, (x + length / 2, y, height / 2), (length / 2, depth / 2, height / 2), 0.0,
                      category="static.manmade", part=KITTI_BUILDING, color=facade, color2=window,
                      texture=TEX_FACADE, tex=(float(rng.uniform(1.8, 4.0)), float(rng.uniform(2.8, 3.8))),
                      reflectivity=float(rng.uniform(0.25, 0.45)))
            x += length + (float(rng.uniform(1, 8)) if rng.random() < 0.3 else 0.0)
        # a skyline behind
        for x in np.arange(s.x_lo, s.x_hi, 25.0):
            height = float(rng.uniform(15, 45)) * tall
            y = sign * (front + 40 + rng.uniform(0, 15))
            b.add(BOX, (x + 12, y, height / 2), (11, 10, height / 2), 0.0, category="static.manmade",
                  part=KITTI_BUILDING, color=_jitter(rng, _pick(rng, FACADES)),
                  color2=_jitter(rng, _pick(rng, WINDOW_TINT)), texture=TEX_FACADE, tex=(3.0, 3.5),
                  reflectivity=0.3)
    # the street bends out of sight: a wall of buildings across both ends
    for x in (s.x_lo - 12, s.x_hi + 12):
        height = float(rng.uniform(10, 30)) * tall
        b.add(BOX, (x, 0.0, height / 2), (6, 70, height / 2), 0.0, category="static.manmade", part=KITTI_BUILDING,
              color=_jitter(rng, _pick(rng, FACADES)), color2=_jitter(rng, _pick(rng, WINDOW_TINT)),
              texture=TEX_FACADE, tex=(3.0, 3.3), reflectivity=0.3)


def _tree(b: _Builder, rng: np.random.Generator, x: float, y: float, z0: float) -> None:
    trunk_h = float(rng.uniform(1.6, 3.5))
    radius = float(rng.uniform(0.1, 0.28))
    bark = _jitter(rng, (0.33, 0.24, 0.16), 0.05)
    b.add(CYLINDER, (x, y, z0 + trunk_h / 2), (radius, radius, trunk_h / 2), 0.0, category="static.vegetation",
          part=KITTI_TRUNK, color=bark, color2=bark * 0.6, texture=TEX_BARK, reflectivity=0.22)
    green = _jitter(rng, _pick(rng, GREENS), 0.05)
    for _ in range(int(rng.integers(1, 3))):
        rh = float(rng.uniform(1.2, 3.2))
        rv = float(rng.uniform(1.0, 2.6))
        b.add(ELLIPSOID, (x + rng.normal(0, 0.4), y + rng.normal(0, 0.4), z0 + trunk_h + rv * 0.7),
              (rh, rh * rng.uniform(0.8, 1.2), rv), float(rng.uniform(0, math.pi)), category="static.vegetation",
              part=KITTI_VEGETATION, color=green, color2=_jitter(rng, green * 1.5, 0.05), texture=TEX_FOLIAGE,
              reflectivity=0.35)


def _vegetation(b: _Builder, rng: np.random.Generator, s: _Street) -> None:
    for sign, width, band in ((-1, s.sidewalk[0], s.band[0]), (1, s.sidewalk[1], s.band[1])):
        inner = s.road + width
        x = s.x_lo + float(rng.uniform(0, 8))
        while x < s.x_hi:
            if rng.random() < 0.5:
                _tree(b, rng, x, sign * (inner + band * rng.uniform(0.3, 0.7)), 0.08)
            elif rng.random() < 0.3:
                _tree(b, rng, x, sign * (s.road + 0.8), 0.15)
            x += float(rng.uniform(6, 14))
        x = s.x_lo
        while x < s.x_hi:
            length = float(rng.uniform(4, 18))
            if rng.random() < 0.25:
                height = float(rng.uniform(0.6, 1.6))
                thick = float(rng.uniform(0.6, 1.3))
                green = _jitter(rng, _pick(rng, GREENS), 0.05)
                b.add(BOX, (x + length / 2, sign * (inner + band - thick / 2 - 0.1), 0.05 + height / 2),
                      (length / 2, thick / 2, height / 2), 0.0, category="static.vegetation", part=KITTI_VEGETATION,
                      color=green * 0.8, color2=green * 1.3, texture=TEX_FOLIAGE, reflectivity=0.35)
            elif rng.random() < 0.15:
                fence = _jitter(rng, _pick(rng, [(0.3, 0.3, 0.32), (0.55, 0.45, 0.3), (0.7, 0.7, 0.7)]))
                height = float(rng.uniform(1.0, 1.8))
                b.add(BOX, (x + length / 2, sign * (inner + band - 0.1), 0.05 + height / 2),
                      (length / 2, 0.04, height / 2), 0.0, category="static.manmade", part=KITTI_FENCE,
                      color=fence, color2=fence * 0.5, texture=TEX_RIBS, tex=(0.15, 0.0), reflectivity=0.4)
            x += length + float(rng.uniform(2, 10))


def _street_furniture(b: _Builder, rng: np.random.Generator, s: _Street) -> None:
    metal = _jitter(rng, _pick(rng, [(0.35, 0.36, 0.38), (0.15, 0.25, 0.18), (0.12, 0.12, 0.12)]))
    for sign, width in ((-1, s.sidewalk[0]), (1, s.sidewalk[1])):
        y = sign * (s.road + 0.45)
        x = s.x_lo + float(rng.uniform(0, 15))
        while x < s.x_hi:
            height = float(rng.uniform(6, 9))
            radius = float(rng.uniform(0.08, 0.15))
            b.add(CYLINDER, (x, y, 0.15 + height / 2), (radius, radius, height / 2), 0.0, category="static.manmade",
                  part=KITTI_POLE, color=metal, texture=TEX_PLAIN, reflectivity=0.45)
            arm = float(rng.uniform(1.2, 2.5))
            b.add(BOX, (x, y - sign * arm / 2, 0.15 + height - 0.1), (0.06, arm / 2, 0.06), 0.0,
                  category="static.manmade", part=KITTI_POLE, color=metal, reflectivity=0.45)
            if rng.random() < 0.45:
                _sign(b, rng, x + radius + 0.04, y, float(rng.uniform(2.2, 3.2)))
            x += float(rng.uniform(18, 35))
        # standalone sign posts and bins
        for x in rng.uniform(s.x_lo, s.x_hi, int(rng.integers(2, 6))):
            post = float(rng.uniform(2.4, 3.2))
            yy = sign * (s.road + rng.uniform(0.3, 0.6))
            b.add(CYLINDER, (x, yy, 0.15 + post / 2), (0.04, 0.04, post / 2), 0.0, category="static.manmade",
                  part=KITTI_POLE, color=(0.55, 0.55, 0.57), reflectivity=0.5)
            _sign(b, rng, x + 0.08, yy, post - 0.3)
        for x in rng.uniform(s.x_lo, s.x_hi, int(rng.integers(1, 5))):
            bin_color = _jitter(rng, _pick(rng, [(0.1, 0.3, 0.15), (0.2, 0.2, 0.22), (0.1, 0.2, 0.5)]))
            b.add(CYLINDER, (x, sign * (s.road + width - 0.5), 0.15 + 0.5), (0.3, 0.3, 0.5), 0.0,
                  category="movable_object.pushable_pullable", part=KITTI_OTHER_OBJECT, color=bin_color,
                  texture=TEX_PLAIN, reflectivity=0.3, instance=b.new_instance())


def _sign(b: _Builder, rng: np.random.Generator, x: float, y: float, z: float) -> None:
    width, height = float(rng.uniform(0.45, 0.9)), float(rng.uniform(0.45, 0.9))
    color = _jitter(rng, _pick(rng, SIGN_COLORS), 0.03)
    b.add(BOX, (x, y, z), (0.02, width / 2, height / 2), 0.0, category="static.manmade", part=KITTI_SIGN,
          color=color, color2=(0.95, 0.95, 0.95), texture=TEX_STRIPES, tex=(0.0, 0.0), reflectivity=0.95)


# ---------------------------------------------------------------------------------------------------------------
# Things: vehicles, people, cones and barriers.
# ---------------------------------------------------------------------------------------------------------------


def _wheels(b: _Builder, at, yaw, xs, half_track, radius, width, category, part, inst) -> None:
    rubber = (0.05, 0.05, 0.05)
    for dx in xs:
        for dy in (-half_track, half_track):
            b.add_local(ELLIPSOID, at, yaw, (dx, dy, radius), (radius, width, radius), category=category, part=part,
                        color=rubber, texture=TEX_PLAIN, reflectivity=0.05, instance=inst)


def _car(b: _Builder, rng: np.random.Generator, at, yaw: float) -> float:
    length, width = float(rng.uniform(3.8, 5.0)), float(rng.uniform(1.7, 2.0))
    body, cabin = float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.42, 0.62))
    paint = _jitter(rng, _pick(rng, CAR_PAINT), 0.03)
    glass = _jitter(rng, _pick(rng, WINDOW_TINT), 0.02)
    inst = b.new_instance()
    material = dict(category="vehicle.car", part=KITTI_CAR, color=paint, color2=glass, texture=TEX_VEHICLE,
                    reflectivity=0.25 + 0.4 * float(paint.mean()), instance=inst)
    b.add_local(BOX, at, yaw, (0, 0, 0.28 + body / 2), (length / 2, width / 2, body / 2), tex=(9.0, 9.0), **material)
    top = 0.28 + body
    b.add_local(BOX, at, yaw, (-0.06 * length, 0, top + cabin / 2), (0.28 * length, 0.45 * width, cabin / 2),
                tex=(top + 0.04, top + cabin - 0.06), **material)
    _wheels(b, at, yaw, (length / 2 - 0.8, -length / 2 + 0.8), width / 2 - 0.15, 0.32, 0.11, "vehicle.car",
            KITTI_CAR, inst)
    return length


def _truck(b: _Builder, rng: np.random.Generator, at, yaw: float, cargo: bool = True) -> float:
    cab_color = _jitter(rng, _pick(rng, [(0.9, 0.9, 0.9), (0.7, 0.1, 0.1), (0.1, 0.25, 0.6), (0.15, 0.15, 0.15)]))
    inst = b.new_instance()
    cargo_len = float(rng.uniform(4.5, 8.0)) if cargo else 1.5
    length = 2.4 + cargo_len
    width = float(rng.uniform(2.3, 2.55))
    cab_h = float(rng.uniform(2.6, 3.1))
    material = dict(category="vehicle.truck", part=KITTI_TRUCK, instance=inst)
    front = length / 2 - 1.2
    b.add_local(BOX, at, yaw, (front, 0, 0.5 + cab_h / 2), (1.2, width / 2, cab_h / 2), color=cab_color,
                color2=_pick(rng, WINDOW_TINT), texture=TEX_VEHICLE, tex=(0.5 + cab_h * 0.62, 0.5 + cab_h - 0.15),
                reflectivity=0.45, **material)
    b.add_local(BOX, at, yaw, (-1.2, 0, 0.7), (cargo_len / 2, width / 2 - 0.2, 0.22), color=(0.12, 0.12, 0.12),
                reflectivity=0.15, **material)
    if cargo:
        box_h = float(rng.uniform(2.6, 3.4))
        box_color = _jitter(rng, _pick(rng, [(0.85, 0.85, 0.82), (0.6, 0.6, 0.62), (0.2, 0.35, 0.6),
                                             (0.75, 0.35, 0.1)]))
        b.add_local(BOX, at, yaw, (-1.25, 0, 0.95 + box_h / 2), (cargo_len / 2 - 0.05, width / 2, box_h / 2),
                    color=box_color, color2=box_color * 0.7, texture=TEX_RIBS, tex=(0.6, 0.0), reflectivity=0.5,
                    **material)
    _wheels(b, at, yaw, (front, -length / 2 + 1.2), width / 2 - 0.25, 0.5, 0.2, "vehicle.truck", KITTI_TRUCK, inst)
    return length


def _bus(b: _Builder, rng: np.random.Generator, at, yaw: float) -> float:
    bendy = rng.random() < 0.25
    length = 18.0 if bendy else float(rng.uniform(10.5, 13.0))
    height, width = float(rng.uniform(3.0, 3.4)), 2.55
    paint = _jitter(rng, _pick(rng, [(0.92, 0.92, 0.9), (0.75, 0.1, 0.1), (0.1, 0.45, 0.75), (0.55, 0.7, 0.2),
                                     (0.9, 0.65, 0.1)]), 0.03)
    inst = b.new_instance()
    category = "vehicle.bus.bendy" if bendy else "vehicle.bus.rigid"
    material = dict(category=category, part=KITTI_BUS, color=paint, color2=_pick(rng, WINDOW_TINT),
                    texture=TEX_VEHICLE, tex=(1.3, 0.3 + height - 0.45), reflectivity=0.45, instance=inst)
    pieces = ((length / 4 + 0.1, length / 4 - 0.2), (-length / 4 - 0.1, length / 4 - 0.2)) if bendy else (
        (0.0, length / 2),)
    for dx, half in pieces:
        b.add_local(BOX, at, yaw, (dx, 0, 0.3 + height / 2), (half, width / 2, height / 2), **material)
    _wheels(b, at, yaw, (length / 2 - 2.5, -length / 2 + 3.0), width / 2 - 0.25, 0.5, 0.18, category, KITTI_BUS,
            inst)
    return length


def _trailer(b: _Builder, rng: np.random.Generator, at, yaw: float) -> float:
    length = float(rng.uniform(7.0, 12.0))
    height, width = float(rng.uniform(2.8, 3.6)), 2.5
    color = _jitter(rng, _pick(rng, [(0.85, 0.85, 0.85), (0.6, 0.6, 0.62), (0.75, 0.3, 0.1), (0.15, 0.3, 0.6),
                                     (0.2, 0.5, 0.25)]))
    inst = b.new_instance()
    material = dict(category="vehicle.trailer", part=KITTI_OTHER_VEHICLE, instance=inst)
    b.add_local(BOX, at, yaw, (0, 0, 1.2 + height / 2), (length / 2, width / 2, height / 2), color=color,
                color2=color * 0.65, texture=TEX_RIBS, tex=(0.9, 0.0), reflectivity=0.5, **material)
    b.add_local(BOX, at, yaw, (-length / 2 + 1.5, 0, 0.8), (1.4, width / 2 - 0.2, 0.3), color=(0.1, 0.1, 0.1),
                reflectivity=0.12, **material)
    for dy in (-0.8, 0.8):
        b.add_local(BOX, at, yaw, (length / 2 - 2.0, dy, 0.6), (0.08, 0.08, 0.6), color=(0.2, 0.2, 0.2),
                    reflectivity=0.2, **material)
    _wheels(b, at, yaw, (-length / 2 + 1.0, -length / 2 + 2.2), width / 2 - 0.3, 0.48, 0.2, "vehicle.trailer",
            KITTI_OTHER_VEHICLE, inst)
    return length


def _construction_vehicle(b: _Builder, rng: np.random.Generator, at, yaw: float) -> float:
    yellow = _jitter(rng, _pick(rng, [(0.92, 0.72, 0.05), (0.95, 0.5, 0.05), (0.85, 0.8, 0.2)]), 0.03)
    inst = b.new_instance()
    length, width = float(rng.uniform(4.5, 6.5)), float(rng.uniform(2.3, 2.9))
    material = dict(category="vehicle.construction", part=KITTI_OTHER_VEHICLE, instance=inst)
    b.add_local(BOX, at, yaw, (0, 0, 0.45), (length / 2, width / 2, 0.45), color=(0.1, 0.1, 0.1),
                color2=(0.25, 0.25, 0.25), texture=TEX_RIBS, tex=(0.25, 0.0), reflectivity=0.15, **material)
    body_h = float(rng.uniform(1.1, 1.6))
    b.add_local(BOX, at, yaw, (-0.3, 0, 0.9 + body_h / 2), (length / 2 - 0.4, width / 2 - 0.1, body_h / 2),
                color=yellow, color2=(0.08, 0.08, 0.08), texture=TEX_HAZARD, tex=(0.9 + body_h * 0.45, 0.0),
                reflectivity=0.55, **material)
    b.add_local(BOX, at, yaw, (-length / 2 + 1.4, 0.2, 0.9 + body_h + 0.8), (0.9, 0.85, 0.8), color=yellow,
                color2=_pick(rng, WINDOW_TINT), texture=TEX_VEHICLE,
                tex=(0.9 + body_h + 0.5, 0.9 + body_h + 1.5), reflectivity=0.5, **material)
    boom = float(rng.uniform(3.0, 4.5))
    b.add_local(BOX, at, yaw, (length / 2 + boom / 2 - 0.8, -0.4, 0.9 + body_h + 0.6), (boom / 2, 0.2, 0.25),
                color=yellow, color2=(0.08, 0.08, 0.08), texture=TEX_HAZARD, tex=(0.0, 0.0), reflectivity=0.55,
                **material)
    b.add_local(BOX, at, yaw, (length / 2 + boom - 0.6, -0.4, 0.7), (0.5, 0.6, 0.45), color=(0.25, 0.22, 0.2),
                reflectivity=0.3, **material)
    return length + boom


def _two_wheeler(b: _Builder, rng: np.random.Generator, at, yaw: float, motor: bool) -> float:
    inst = b.new_instance()
    if motor:
        material = dict(category="vehicle.motorcycle", part=KITTI_MOTORCYCLE, instance=inst)
        color = _jitter(rng, _pick(rng, [(0.1, 0.1, 0.1), (0.7, 0.1, 0.1), (0.1, 0.2, 0.7), (0.7, 0.7, 0.72),
                                         (0.95, 0.5, 0.05)]), 0.03)
        radius, tire, wheelbase = 0.31, 0.07, 0.72
        b.add_local(BOX, at, yaw, (0, 0, 0.68), (0.55, 0.17, 0.24), color=color, color2=color * 0.5,
                    texture=TEX_VEHICLE, tex=(9.0, 9.0), reflectivity=0.5, **material)
        b.add_local(BOX, at, yaw, (-0.3, 0, 0.95), (0.35, 0.15, 0.05), color=(0.08, 0.08, 0.08),
                    reflectivity=0.1, **material)
        b.add_local(BOX, at, yaw, (0.55, 0, 1.05), (0.05, 0.38, 0.03), color=(0.6, 0.6, 0.6), reflectivity=0.6,
                    **material)
    else:
        material = dict(category="vehicle.bicycle", part=KITTI_BICYCLE, instance=inst)
        color = _jitter(rng, _pick(rng, BRIGHT), 0.03)
        radius, tire, wheelbase = float(rng.uniform(0.3, 0.36)), 0.025, 0.52
        for offset, half in (((0.05, 0, 0.78), (0.33, 0.025, 0.025)), ((-0.22, 0, 0.6), (0.025, 0.025, 0.28)),
                             ((0.38, 0, 0.66), (0.025, 0.025, 0.34)), ((-0.22, 0, 0.92), (0.12, 0.06, 0.03)),
                             ((0.36, 0, 1.0), (0.03, 0.28, 0.02))):
            b.add_local(BOX, at, yaw, offset, half, color=color, reflectivity=0.45, **material)
    for dx in (-wheelbase, wheelbase):
        b.add_local(ELLIPSOID, at, yaw, (dx, 0, radius), (radius, tire, radius), color=(0.06, 0.06, 0.06),
                    reflectivity=0.08, **material)
    return 2 * (wheelbase + radius)


def _pedestrian(b: _Builder, rng: np.random.Generator, x: float, y: float, z0: float, kind: str = "") -> None:
    kind = kind or ("human.pedestrian.child" if rng.random() < 0.15 else "human.pedestrian.adult")
    height = float(rng.uniform(1.0, 1.4)) if kind.endswith("child") else float(rng.uniform(1.55, 1.95))
    scale = height / 1.75
    inst = b.new_instance()
    yaw = float(rng.uniform(-math.pi, math.pi))
    top: np.ndarray | tuple[float, float, float] = _jitter(rng, _pick(rng, CLOTHES), 0.05)
    if kind.endswith("construction_worker"):
        top = _jitter(rng, _pick(rng, [(0.95, 0.85, 0.1), (0.98, 0.45, 0.05)]), 0.02)
    elif kind.endswith("police_officer"):
        top = (0.08, 0.12, 0.3)
    bottom = _jitter(rng, _pick(rng, CLOTHES[:6]), 0.05)
    material: dict[str, Any] = dict(category=kind, part=KITTI_PERSON, instance=inst)
    legs = 0.47 * height
    b.add(CYLINDER, (x, y, z0 + legs / 2), (0.16 * scale, 0.16 * scale, legs / 2), 0.0, color=bottom,
          texture=TEX_CLOTHES, reflectivity=0.22, **material)
    torso = 0.34 * height
    b.add(ELLIPSOID, (x, y, z0 + legs + torso / 2), (0.23 * scale, 0.15 * scale, torso / 2 + 0.04), yaw,
          color=top, texture=TEX_CLOTHES, reflectivity=0.3, **material)
    head = 0.105 * scale
    b.add(ELLIPSOID, (x, y, z0 + height - head), (head * 0.9, head * 0.8, head), yaw,
          color=_pick(rng, SKIN), color2=_pick(rng, HAIR), texture=TEX_HEAD, reflectivity=0.25, **material)


def _cone(b: _Builder, rng: np.random.Generator, x: float, y: float, z0: float) -> None:
    height = float(rng.uniform(0.45, 0.9))
    inst = b.new_instance()
    color = _jitter(rng, _pick(rng, [(0.98, 0.42, 0.05), (0.95, 0.3, 0.05), (0.85, 0.9, 0.2)]), 0.02)
    material: dict[str, Any] = dict(category="movable_object.trafficcone", part=KITTI_OTHER_OBJECT, instance=inst)
    b.add(CONE, (x, y, z0 + 0.03 + height / 2), (0.24 * height, 0.24 * height, height / 2), 0.0, color=color,
          color2=(0.95, 0.95, 0.95), texture=TEX_CONE, tex=(0.45, 0.65), reflectivity=0.75, **material)
    b.add(BOX, (x, y, z0 + 0.015), (0.3 * height, 0.3 * height, 0.015), 0.0, color=(0.1, 0.1, 0.1),
          reflectivity=0.1, **material)


def _barrier(b: _Builder, rng: np.random.Generator, x: float, y: float, z0: float, yaw: float) -> float:
    inst = b.new_instance()
    material: dict[str, Any] = dict(category="movable_object.barrier", part=KITTI_FENCE, instance=inst)
    if rng.random() < 0.5:  # concrete jersey barrier
        length, height = float(rng.uniform(2.0, 3.0)), float(rng.uniform(0.8, 1.0))
        grey = _jitter(rng, (0.72, 0.72, 0.7), 0.03)
        b.add(BOX, (x, y, z0 + height / 2), (length / 2, 0.28, height / 2), yaw, color=grey, color2=grey * 0.8,
              texture=TEX_STRIPES, tex=(0.0, 0.0), reflectivity=0.4, **material)
    else:  # plastic, striped
        length, height = float(rng.uniform(1.4, 2.0)), float(rng.uniform(0.9, 1.1))
        color = _pick(rng, [(0.85, 0.1, 0.08), (0.95, 0.45, 0.05)])
        b.add(BOX, (x, y, z0 + height / 2), (length / 2, 0.2, height / 2), yaw, color=color,
              color2=(0.95, 0.95, 0.95), texture=TEX_STRIPES, tex=(0.5, 1.0), reflectivity=0.7, **material)
    return length


def _construction_zone(b: _Builder, rng: np.random.Generator, s: _Street, lanes: _Lanes,
                       c: SceneConditions) -> None:
    """Barriers along the far road edge, cones tapering in front, an excavator behind, workers."""
    far_side = 1.0 if not c.left_hand_traffic else -1.0  # the opposite side of the ego lane
    x0 = float(rng.uniform(0, s.travel + 25))
    y = far_side * (s.road - 1.2)
    x = x0
    for _ in range(int(rng.integers(3, 7))):
        length = _barrier(b, rng, x, y, 0.0, 0.0)
        x += length + float(rng.uniform(0.1, 0.6))
    lanes.take(y, x0 - 6, x + 4)
    for k in range(int(rng.integers(4, 9))):
        _cone(b, rng, x0 - 1.5 - 1.8 * k, y - far_side * 0.3 * k, 0.0)
    band_y = far_side * (s.road + s.sidewalk[far_side > 0] + s.band[far_side > 0] * 0.5)
    _construction_vehicle(b, rng, ((x0 + x) / 2, band_y), float(rng.uniform(-0.4, 0.4)))
    for _ in range(int(rng.integers(1, 4))):
        _pedestrian(b, rng, float(rng.uniform(x0, x)), far_side * (s.road - rng.uniform(0.2, 0.6)), 0.0,
                    "human.pedestrian.construction_worker")


_VEHICLES = (("car", 0.72), ("truck", 0.1), ("bus", 0.06), ("trailer", 0.04), ("construction", 0.02),
             ("motorcycle", 0.06))


def _place_vehicle(b: _Builder, rng: np.random.Generator, kind: str, x: float, y: float, yaw: float) -> float:
    yaw = yaw + float(rng.normal(0, 0.03))
    if kind == "car":
        return _car(b, rng, (x, y), yaw)
    if kind == "truck":
        return _truck(b, rng, (x, y), yaw)
    if kind == "bus":
        return _bus(b, rng, (x, y), yaw)
    if kind == "trailer":  # a tractor unit pulling a trailer, or a parked trailer
        length = _trailer(b, rng, (x, y), yaw)
        if rng.random() < 0.6:
            dx = length / 2 + 2.2
            _truck(b, rng, (x + dx * math.cos(yaw), y + dx * math.sin(yaw)), yaw, cargo=False)
            length += 4.0
        return length
    if kind == "construction":
        return _construction_vehicle(b, rng, (x, y), yaw)
    return _two_wheeler(b, rng, (x, y), yaw, motor=True)


def _vehicle_length(kind: str) -> float:
    return {"car": 5.0, "truck": 10.5, "bus": 18.0, "trailer": 17.0, "construction": 11.5, "motorcycle": 2.0}[kind]


def _traffic(b: _Builder, rng: np.random.Generator, s: _Street, lanes: _Lanes, c: SceneConditions) -> None:
    # the ego lane stays clear around the drive
    lanes.take(s.ego_lane_y, -14.0, s.travel + 14.0)
    lane_list = s.lane_centres()
    if c.left_hand_traffic:
        lane_list = [(y, yaw + math.pi) for y, yaw in lane_list]
    parking = []
    if s.parking > 0:
        edge = s.road - s.parking / 2
        parking = [(-edge, 0.0), (edge, math.pi)]
    # every kind of vehicle at least once within lidar range of the drive
    near = (-25.0, s.travel + 35.0)
    for kind in ("bus", "truck", "trailer", "motorcycle", "car", "car", "construction"):
        if kind == "construction" and c.construction:
            continue
        for _ in range(30):
            y, yaw = (lane_list + parking)[int(rng.integers(len(lane_list) + len(parking)))]
            length = _vehicle_length(kind)
            x = float(rng.uniform(*near))
            if lanes.free(y, x - length / 2 - 1, x + length / 2 + 1):
                lanes.take(y, x - length / 2 - 1, x + length / 2 + 1)
                _place_vehicle(b, rng, kind, x, y, yaw)
                break
    names = [name for name, _ in _VEHICLES]
    weights = np.array([w for _, w in _VEHICLES])
    for y, yaw in lane_list + parking:
        x = s.x_lo + float(rng.uniform(0, 10))
        parked = (y, yaw) in parking
        while x < s.x_hi - 8:
            kind = "car" if parked and rng.random() < 0.85 else names[int(rng.choice(len(names), p=weights))]
            length = _vehicle_length(kind)
            if rng.random() < (0.75 if parked else 0.35) * c.traffic and lanes.free(y, x, x + length + 1):
                lanes.take(y, x, x + length + 1)
                _place_vehicle(b, rng, kind, x + length / 2, y, yaw)
            x += length + float(rng.uniform(1.0, 12.0 if parked else 25.0))
    # parked bicycles and motorcycles at the curb
    for sign, width in ((-1, s.sidewalk[0]), (1, s.sidewalk[1])):
        for k in range(int(rng.integers(1, 4))):
            x = float(rng.uniform(*near)) if k == 0 else float(rng.uniform(s.x_lo + 10, s.x_hi - 10))
            yaw = float(rng.uniform(-math.pi, math.pi))
            for j in range(int(rng.integers(1, 4))):
                _two_wheeler(b, rng, (x + 0.7 * j, sign * (s.road + width - 0.7), 0.15), math.pi / 2 + yaw * 0.05,
                             motor=rng.random() < 0.2)


def _people(b: _Builder, rng: np.random.Generator, s: _Street, c: SceneConditions) -> None:
    count = int(6 + 20 * c.pedestrians)
    for k in range(count):
        side = -1 if rng.random() < 0.5 else 1
        width = s.sidewalk[side > 0]
        near = k < 3
        x = float(rng.uniform(-20, s.travel + 30)) if near else float(rng.uniform(s.x_lo + 5, s.x_hi - 5))
        kind = "human.pedestrian.police_officer" if rng.random() < 0.03 else ""
        _pedestrian(b, rng, x, side * (s.road + rng.uniform(0.8, width - 0.4)), 0.15, kind)
        if rng.random() < 0.3:  # walking in a pair
            _pedestrian(b, rng, x + rng.uniform(0.6, 1.0), side * (s.road + rng.uniform(0.8, width - 0.4)), 0.15)


# ---------------------------------------------------------------------------------------------------------------
# Object boxes: derived from the primitives, after the layout (no random draw).
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceBoxes:
    """One oriented box per object instance of a world (street frame, ``slidr.data.boxes`` layout)."""

    instance: np.ndarray  # (K,) int32 instance ids, increasing
    category: np.ndarray  # (K,) uint8 nuScenes raw category index of the object
    boxes: np.ndarray  # (K, 7) float64 [x, y, z, l, w, h, yaw]: centre, length along yaw, width, height


def instance_boxes(world: World) -> InstanceBoxes:
    """The tightest box around all primitives of each object instance, in the object's own orientation.

    The orientation is that of the object's first box or ellipsoid primitive (its main body: a vehicle's hull, a
    pedestrian's torso, a barrier's block, a cone's base plate); an object made only of cylinders and cones would
    get yaw 0. In that frame each primitive's exact half extents are taken (a box turned by ``phi`` spans
    ``hx |cos phi| + hy |sin phi|``, an ellipse ``sqrt(hx^2 cos^2 phi + hy^2 sin^2 phi)``, a cylinder or cone its
    radius), so every surface point of the object lies inside its box and the box touches the object on all
    six sides.

    Returns
    -------
    InstanceBoxes, one row per instance id > 0 of ``world.instance``.
    """
    things = np.flatnonzero(world.instance > 0)
    order = things[np.argsort(world.instance[things], kind="stable")]
    ids, starts = np.unique(world.instance[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    params = world.params
    prim_yaw = np.arctan2(params[:, 7], params[:, 6])
    oriented = (world.kinds == BOX) | (world.kinds == ELLIPSOID)
    out = np.zeros((len(ids), 7))
    category = np.zeros(len(ids), dtype=np.uint8)
    for k, (start, end) in enumerate(zip(starts, ends)):
        members = order[start:end]
        main = members[oriented[members]]
        yaw = float(prim_yaw[main[0]]) if len(main) else 0.0
        cos, sin = math.cos(yaw), math.sin(yaw)
        centre = params[members, :3]
        half = params[members, 3:6]
        # primitive centres and half extents in the object's frame (x along yaw)
        local_x = centre[:, 0] * cos + centre[:, 1] * sin
        local_y = -centre[:, 0] * sin + centre[:, 1] * cos
        phi = prim_yaw[members] - yaw
        c, s = np.abs(np.cos(phi)), np.abs(np.sin(phi))
        kinds = world.kinds[members]
        ext_x = np.where(kinds == BOX, half[:, 0] * c + half[:, 1] * s,
                         np.where(kinds == ELLIPSOID, np.sqrt((half[:, 0] * c) ** 2 + (half[:, 1] * s) ** 2),
                                  half[:, 0]))
        ext_y = np.where(kinds == BOX, half[:, 0] * s + half[:, 1] * c,
                         np.where(kinds == ELLIPSOID, np.sqrt((half[:, 0] * s) ** 2 + (half[:, 1] * c) ** 2),
                                  half[:, 0]))
        lo = np.array([(local_x - ext_x).min(), (local_y - ext_y).min(), (centre[:, 2] - half[:, 2]).min()])
        hi = np.array([(local_x + ext_x).max(), (local_y + ext_y).max(), (centre[:, 2] + half[:, 2]).max()])
        mid = (lo + hi) / 2
        out[k] = (mid[0] * cos - mid[1] * sin, mid[0] * sin + mid[1] * cos, mid[2], *(hi - lo), yaw)
        categories = np.unique(world.category[members])
        if len(categories) != 1:
            raise AssertionError(f"instance {ids[k]} mixes categories {categories.tolist()}")
        category[k] = categories[0]
    return InstanceBoxes(ids.astype(np.int32), category, out)
