"""Camera shading and lidar returns: per-class procedural textures, sun and sky, night and rain looks, noise.

Textures are functions of the hit point in the primitive's own frame (value noise, tiles, windows, stripes),
so that each class has its own look while colours and patterns vary between objects of one class.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from slidr.data.synth import world as w
from slidr.data.synth.sensors import LidarSpec
from slidr.data.synth.world import SceneConditions, World


@numba.njit(cache=True, inline="always")
def _hash(ix, iy, iz, seed):
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
    h &= 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 2246822519) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 3266489917) & 0xFFFFFFFF
    h ^= h >> 16
    return h / 4294967296.0


@numba.njit(cache=True, inline="always")
def _smooth(t):
    return t * t * (3.0 - 2.0 * t)


@numba.njit(cache=True)
def _noise(x, y, z, seed):
    """Value noise in [0, 1) with smooth interpolation between integer lattice points."""
    fx, fy, fz = math.floor(x), math.floor(y), math.floor(z)
    ix, iy, iz = int(fx), int(fy), int(fz)
    tx, ty, tz = _smooth(x - fx), _smooth(y - fy), _smooth(z - fz)
    c000 = _hash(ix, iy, iz, seed)
    c100 = _hash(ix + 1, iy, iz, seed)
    c010 = _hash(ix, iy + 1, iz, seed)
    c110 = _hash(ix + 1, iy + 1, iz, seed)
    c001 = _hash(ix, iy, iz + 1, seed)
    c101 = _hash(ix + 1, iy, iz + 1, seed)
    c011 = _hash(ix, iy + 1, iz + 1, seed)
    c111 = _hash(ix + 1, iy + 1, iz + 1, seed)
    a = c000 + (c100 - c000) * tx
    b = c010 + (c110 - c010) * tx
    c = c001 + (c101 - c001) * tx
    d = c011 + (c111 - c011) * tx
    e = a + (b - a) * ty
    f = c + (d - c) * ty
    return e + (f - e) * tz


@numba.njit(cache=True)
def _fbm(x, y, z, seed):
    return 0.5 * _noise(x, y, z, seed) + 0.3 * _noise(2.03 * x, 2.03 * y, 2.03 * z, seed + 1) + \
        0.2 * _noise(4.1 * x, 4.1 * y, 4.1 * z, seed + 2)


@numba.njit(cache=True)
def _frac(x):
    return x - math.floor(x)


@numba.njit(cache=True)
def _texture(tex_kind, prm, color, color2, tex, px, py, pz, nx, ny, nz, seed, night):
    """Albedo (r, g, b) and emission at a surface point; the point is in the street frame."""
    cx, cy, cz, hz, cs, sn = prm[0], prm[1], prm[2], prm[5], prm[6], prm[7]
    rx, ry = px - cx, py - cy
    lx = cs * rx + sn * ry
    ly = -sn * rx + cs * ry
    # coordinate along a vertical face: the local axis the face does not face
    lnx = cs * nx + sn * ny
    along = ly if abs(lnx) > 0.7 else lx
    r, g, b = color[0], color[1], color[2]
    r2, g2, b2 = color2[0], color2[1], color2[2]
    k = 1.0
    mix = 0.0
    emit = 0.0
    if tex_kind == w.TEX_PLAIN:
        k = 0.9 + 0.2 * _noise(px * 2.0, py * 2.0, pz * 2.0, seed)
    elif tex_kind == w.TEX_ASPHALT:
        k = 0.75 + 0.35 * _fbm(px * 0.4, py * 0.4, 0.0, seed) + 0.25 * (_noise(px * 9, py * 9, 0.0, seed + 5) - 0.5)
        if _noise(px * 0.15, py * 0.6, 0.0, seed + 9) > 0.72:
            mix = 0.6
    elif tex_kind == w.TEX_PAINT:
        k = 0.85 + 0.15 * _noise(px * 5, py * 5, 0.0, seed)
    elif tex_kind == w.TEX_TILES or tex_kind == w.TEX_COBBLE:
        size = tex[0]
        if nz > 0.5:
            u, v = px / size, py / size
            if tex_kind == w.TEX_COBBLE:
                v = py / (0.5 * size)
                u += 0.5 * (math.floor(v) % 2)
            grout = 0.07 if tex_kind == w.TEX_TILES else 0.12
            if _frac(u) < grout or _frac(v) < grout:
                mix = 1.0
            else:
                k = 0.82 + 0.36 * _hash(int(math.floor(u)), int(math.floor(v)), 0, seed)
        else:
            k = 0.8
    elif tex_kind == w.TEX_GRASS:
        mix = min(1.0, max(0.0, 1.6 * (_fbm(px * 0.35, py * 0.35, pz, seed) - 0.35)))
        k = 0.7 + 0.55 * _noise(px * 14, py * 14, pz * 14, seed + 3)
    elif tex_kind == w.TEX_FACADE:
        if nz > 0.5:
            k = 0.55
        else:
            period, floor_h = tex[0], tex[1]
            u = along / period
            v = (pz - 0.6) / floor_h
            if pz > 1.0 and 0.18 < _frac(u) < 0.82 and 0.3 < _frac(v) < 0.85:
                cell = _hash(int(math.floor(u)), int(math.floor(v)), 7, seed)
                mix = 1.0
                k = 0.7 + 0.6 * cell
                if night and cell > 0.6:
                    emit = 0.9
            else:
                k = 0.88 + 0.2 * _noise(along * 3, pz * 3, 0.0, seed)
    elif tex_kind == w.TEX_FOLIAGE:
        k = 0.5 + 0.8 * _noise(px * 3.5, py * 3.5, pz * 3.5, seed)
        if _noise(px * 8, py * 8, pz * 8, seed + 4) > 0.62:
            mix = 1.0
    elif tex_kind == w.TEX_BARK:
        k = 0.65 + 0.5 * _noise(math.atan2(ry, rx) * 4.0, pz * 0.8, 0.0, seed)
    elif tex_kind == w.TEX_STRIPES:
        if tex[1] > 0.0:
            if _frac((along + pz) / tex[1]) < 0.5:
                mix = 1.0
        else:
            k = 0.85 + 0.2 * _noise(along * 4, pz * 4, 0.0, seed)
    elif tex_kind == w.TEX_VEHICLE:
        if tex[0] <= pz <= tex[1] and nz < 0.7:
            mix = 1.0
            k = 0.8 + 0.4 * (pz - tex[0]) / (tex[1] - tex[0] + 1e-6)
        else:
            k = 0.95 + 0.08 * _noise(px * 3, py * 3, pz * 3, seed)
    elif tex_kind == w.TEX_CONE:
        rel = (pz - (cz - hz)) / (2 * hz)
        if tex[0] < rel < tex[1]:
            mix = 1.0
    elif tex_kind == w.TEX_CLOTHES:
        k = 0.8 + 0.35 * _noise(px * 25, py * 25, pz * 25, seed)
    elif tex_kind == w.TEX_HAZARD:
        if pz < tex[0] and _frac((along + pz) / 0.5) < 0.5:
            mix = 1.0
        else:
            k = 0.9 + 0.15 * _noise(px * 4, py * 4, pz * 4, seed)
    elif tex_kind == w.TEX_RIBS:
        if nz < 0.5 and _frac(along / tex[0]) < 0.18:
            mix = 1.0
        k = 0.85 + 0.25 * _fbm(along * 0.8, pz * 0.8, 0.0, seed)
    elif tex_kind == w.TEX_HEAD:
        if pz > cz + 0.25 * hz or lx < -0.3 * prm[3]:
            mix = 1.0
    r = (r + (r2 - r) * mix) * k
    g = (g + (g2 - g) * mix) * k
    b = (b + (b2 - b) * mix) * k
    return r, g, b, emit


@numba.njit(parallel=True, cache=True)
def _shade_kernel(origin, directions, distance, prim, normals, params, color, color2, texture, tex, sun,
                  sky_low, sky_high, ambient, night, rain, seed, noise_seed, noise_sigma, out):
    for i in numba.prange(directions.shape[0]):
        dx, dy, dz = directions[i, 0], directions[i, 1], directions[i, 2]
        p = prim[i]
        if p < 0:
            t = min(1.0, max(0.0, dz * 2.5))
            r = sky_low[0] + (sky_high[0] - sky_low[0]) * t
            g = sky_low[1] + (sky_high[1] - sky_low[1]) * t
            b = sky_low[2] + (sky_high[2] - sky_low[2]) * t
            d = 300.0
        else:
            d = min(distance[i], 300.0)
            px, py, pz = origin[0] + d * dx, origin[1] + d * dy, origin[2] + d * dz
            nx, ny, nz = normals[i, 0], normals[i, 1], normals[i, 2]
            r, g, b, emit = _texture(texture[p], params[p], color[p], color2[p], tex[p], px, py, pz, nx, ny, nz,
                                     seed + p % 97, night)
            facing = max(0.0, -(nx * dx + ny * dy + nz * dz))
            if night:
                # street lamps and the ego vehicle's headlights: light falls off with distance
                light = ambient + 0.9 * (0.3 + 0.7 * facing) / (1.0 + (d / 11.0) ** 2)
            else:
                diffuse = max(0.0, nx * sun[0] + ny * sun[1] + nz * sun[2])
                light = ambient + (1.0 - ambient) * diffuse + 0.12 * (0.5 + 0.5 * nz)
                if texture[p] == w.TEX_VEHICLE:
                    # glossy paint: a highlight where the sun reflects towards the camera
                    dot = nx * sun[0] + ny * sun[1] + nz * sun[2]
                    rx, ry, rz = 2 * dot * nx - sun[0], 2 * dot * ny - sun[1], 2 * dot * nz - sun[2]
                    light += 0.8 * max(0.0, -(rx * dx + ry * dy + rz * dz)) ** 24
            r = r * light + emit
            g = g * light + emit * 0.85
            b = b * light + emit * 0.5
        if rain:
            fog = 1.0 - math.exp(-d / 55.0)
            gray = (r + g + b) / 3.0
            r = (0.6 * r + 0.4 * gray) * (1 - fog) + 0.6 * fog
            g = (0.6 * g + 0.4 * gray) * (1 - fog) + 0.6 * fog
            b = (0.6 * b + 0.4 * gray) * (1 - fog) + 0.6 * fog
        elif not night:
            haze = 1.0 - math.exp(-d / 400.0)
            r = r * (1 - haze) + 0.8 * haze
            g = g * (1 - haze) + 0.8 * haze
            b = b * (1 - haze) + 0.8 * haze
        # sensor noise: approximately Gaussian (sum of two uniforms), independent per pixel and channel
        for c in range(3):
            value = (r, g, b)[c]
            u = _hash(i, c, 0, noise_seed) + _hash(i, c, 1, noise_seed) - 1.0
            value = min(1.0, max(0.0, value + noise_sigma * 2.449 * u)) ** (1 / 1.1)
            out[i, c] = np.uint8(value * 255.0 + 0.5)


def render_image(origin: np.ndarray, directions: np.ndarray, distance: np.ndarray, prim: np.ndarray,
                 normals: np.ndarray, world: World, conditions: SceneConditions, image_hw: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """The camera image of already cast rays: texture, light, sky, haze or rain fog, rain streaks, noise.

    Parameters
    ----------
    origin : (3,) ray origin (street frame).
    directions : (H * W, 3) unit directions (street frame), row-major.
    distance, prim, normals : the ray cast's output (see :func:`slidr.data.synth.raycast.cast_rays`).
    world : World
    conditions : SceneConditions (sun, rain, night)
    image_hw : (H, W)
    rng : the frame's random generator (noise and rain streaks).

    Returns
    -------
    (H, W, 3) uint8 image.
    """
    sun_global = np.array([math.cos(conditions.sun_elevation) * math.cos(conditions.sun_azimuth),
                           math.cos(conditions.sun_elevation) * math.sin(conditions.sun_azimuth),
                           math.sin(conditions.sun_elevation)])
    sun = np.linalg.inv(world.street_to_global[:3, :3]) @ sun_global
    if conditions.night:
        sky_low, sky_high, ambient, sigma = (0.05, 0.05, 0.09), (0.01, 0.01, 0.03), 0.05, 0.035
    elif conditions.rain:
        sky_low, sky_high, ambient, sigma = (0.62, 0.64, 0.66), (0.5, 0.52, 0.55), 0.55, 0.015
        sun = sun * 0.35
    else:
        sky_low, sky_high, ambient, sigma = (0.78, 0.84, 0.9), (0.35, 0.55, 0.85), 0.38, 0.012
    out = np.empty((directions.shape[0], 3), dtype=np.uint8)
    _shade_kernel(np.asarray(origin, dtype=np.float64), directions, distance, prim, normals, world.params,
                  world.color, world.color2, world.texture, world.tex, sun, np.array(sky_low), np.array(sky_high),
                  ambient, conditions.night, conditions.rain, conditions.seed % 100000, int(rng.integers(2**31)),
                  sigma, out)
    image = out.reshape(*image_hw, 3)
    if conditions.rain:
        _rain_streaks(image, rng)
    return image


def _rain_streaks(image: np.ndarray, rng: np.random.Generator) -> None:
    """Short bright slanted streaks, drawn in place on a uint8 image."""
    height, width = image.shape[:2]
    count = height * width // 400
    length = max(4, height // 30)
    rows = rng.integers(0, height - length, count)
    cols = rng.integers(0, width - length // 3, count)
    for step in range(length):
        patch = image[rows + step, cols + step // 3].astype(np.float32)
        image[rows + step, cols + step // 3] = (patch * 0.6 + 90.0).astype(np.uint8)


def lidar_returns(distance: np.ndarray, prim: np.ndarray, normals: np.ndarray, directions: np.ndarray,
                  world: World, conditions: SceneConditions, spec: LidarSpec,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which lidar rays return, their measured range and intensity.

    Range noise is Gaussian; a return is lost at random (more often far away, on dark surfaces and in rain).
    Intensity follows the material's reflectivity and the incidence angle, on nuScenes' 0-255 scale.

    Returns
    -------
    keep : (R,) bool
    measured_range : (R,) float64
    intensity : (R,) float64
    """
    hit = (prim >= 0) & (distance <= spec.max_range) & (distance >= spec.min_range)
    safe = np.where(prim >= 0, prim, 0)
    reflect = world.reflectivity[safe].astype(np.float64)
    ratio = np.minimum(distance, spec.max_range) / spec.max_range
    loss = spec.dropout + 0.35 * ratio ** 2 * (1 - reflect) + (0.08 if conditions.rain else 0.0)
    keep = hit & (rng.random(distance.shape) >= loss)
    noise = spec.range_noise * (1.6 if conditions.rain else 1.0)
    measured = distance + rng.normal(0.0, noise, distance.shape)
    incidence = np.abs(np.einsum("ij,ij->i", normals.astype(np.float64), directions))
    intensity = 255.0 * reflect * (0.25 + 0.75 * incidence) / (1.0 + 2.0 * ratio)
    intensity = np.clip(intensity + rng.normal(0.0, 1.5, distance.shape), 0.0, 255.0)
    return keep, measured, np.round(intensity)
