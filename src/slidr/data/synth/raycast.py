"""Ray casting against analytic primitives, culled by a 2-D grid of cells (numba, parallel over rays).

Primitives (``kinds``) and their parameter rows ``params[i] = (cx, cy, cz, hx, hy, hz, cos_yaw, sin_yaw)``:

- ``BOX``: an oriented box, centre ``c``, half sizes ``h`` along its own axes, turned by ``yaw`` about z;
- ``CYLINDER``: a vertical cylinder, axis through ``(cx, cy)``, radius ``hx``, from ``cz - hz`` to ``cz + hz``;
- ``ELLIPSOID``: centre ``c``, radii ``h`` along its own axes, turned by ``yaw`` about z;
- ``CONE``: a vertical cone, base of radius ``hx`` at ``cz - hz``, apex at ``cz + hz``.

A ray walks the grid cells its x-y projection crosses (Amanatides and Woo) and is tested only against the
primitives listed in those cells; it stops as soon as the nearest hit lies before the exit of the current cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

BOX, CYLINDER, ELLIPSOID, CONE = 0, 1, 2, 3

_T_MIN = 1e-3  # hits closer than this to the ray origin are ignored (a ray never hits its own start)


@dataclass(frozen=True)
class Grid:
    """Primitives listed per x-y cell (compressed rows): ``items[start[c]:start[c + 1]]`` are in cell ``c``.

    Cell ``c = ix * ny + iy`` covers ``[x0 + ix * cell, x0 + (ix + 1) * cell)`` and likewise in y;
    ``z_range`` bounds every primitive, so rays leave the world once they are above or below it.
    """

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int
    z_range: tuple[float, float]
    start: np.ndarray  # (nx * ny + 1,) int64
    items: np.ndarray  # (K,) int32
    large: np.ndarray  # (L,) int32 primitives too large to list per cell: every ray tests them once
    item_top: np.ndarray  # (K,) float64 highest point of each listed primitive; each cell's list is sorted by it,
    # highest first, so that a ray passing at height z stops testing a cell at the first primitive below z


def primitive_bounds(kinds: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds of each primitive.

    Parameters
    ----------
    kinds : (P,) int32 primitive kinds.
    params : (P, 8) float64 primitive parameters (see the module docstring).

    Returns
    -------
    (P, 6) float64 ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
    """
    centre = params[:, :3]
    half = params[:, 3:6]
    cos, sin = np.abs(params[:, 6]), np.abs(params[:, 7])
    oriented = (kinds == BOX) | (kinds == ELLIPSOID)
    ext_x = np.where(oriented, half[:, 0] * cos + half[:, 1] * sin, half[:, 0])
    ext_y = np.where(oriented, half[:, 0] * sin + half[:, 1] * cos, half[:, 0])
    extent = np.stack([ext_x, ext_y, half[:, 2]], axis=1)
    return np.concatenate([centre - extent, centre + extent], axis=1)


def build_grid(kinds: np.ndarray, params: np.ndarray, cell: float = 4.0, max_cells: int = 64) -> Grid:
    """List every primitive in each x-y cell its bounds overlap.

    Parameters
    ----------
    kinds : (P,) int32 primitive kinds.
    params : (P, 8) float64 primitive parameters.
    cell : float, cell size in metres.
    max_cells : int, primitives overlapping more cells than this (the ground under everything, walls across
        the street) are not listed per cell but tested once by every ray.

    Returns
    -------
    Grid
    """
    bounds = primitive_bounds(kinds, params)
    x0, y0 = bounds[:, 0].min() - 1e-3, bounds[:, 1].min() - 1e-3
    nx = int(math.ceil((bounds[:, 3].max() - x0) / cell)) + 1
    ny = int(math.ceil((bounds[:, 4].max() - y0) / cell)) + 1
    ix0 = np.floor((bounds[:, 0] - x0) / cell).astype(np.int64)
    ix1 = np.floor((bounds[:, 3] - x0) / cell).astype(np.int64)
    iy0 = np.floor((bounds[:, 1] - y0) / cell).astype(np.int64)
    iy1 = np.floor((bounds[:, 4] - y0) / cell).astype(np.int64)
    cells, prims = [], []
    large = (ix1 - ix0 + 1) * (iy1 - iy0 + 1) > max_cells
    for p in np.flatnonzero(~large):
        xs, ys = np.meshgrid(np.arange(ix0[p], ix1[p] + 1), np.arange(iy0[p], iy1[p] + 1), indexing="ij")
        cells.append((xs * ny + ys).ravel())
        prims.append(np.full(xs.size, p, dtype=np.int32))
    cell_ids = np.concatenate(cells)
    prim_ids = np.concatenate(prims)
    order = np.lexsort((-bounds[prim_ids, 5], cell_ids))
    counts = np.bincount(cell_ids, minlength=nx * ny)
    start = np.zeros(nx * ny + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    z_range = (float(bounds[:, 2].min()) - 1e-3, float(bounds[:, 5].max()) + 1e-3)

    return Grid(float(x0), float(y0), float(cell), nx, ny, z_range, start, prim_ids[order],
                np.flatnonzero(large).astype(np.int32), np.ascontiguousarray(bounds[prim_ids[order], 5]))


@numba.njit(cache=True, inline="always")
def _intersect(kind, prm, ox, oy, oz, dx, dy, dz):
    """Nearest hit distance > _T_MIN of one ray with one primitive, or inf."""
    cx, cy, cz, hx, hy, hz, cs, sn = prm[0], prm[1], prm[2], prm[3], prm[4], prm[5], prm[6], prm[7]
    rx, ry, rz = ox - cx, oy - cy, oz - cz
    if kind == BOX or kind == ELLIPSOID:
        lx = cs * rx + sn * ry
        ly = -sn * rx + cs * ry
        ldx = cs * dx + sn * dy
        ldy = -sn * dx + cs * dy
        if kind == BOX:
            t0, t1 = -np.inf, np.inf
            for o, d, h in ((lx, ldx, hx), (ly, ldy, hy), (rz, dz, hz)):
                if d == 0.0:
                    if o < -h or o > h:
                        return np.inf
                else:
                    a = (-h - o) / d
                    b = (h - o) / d
                    if a > b:
                        a, b = b, a
                    if a > t0:
                        t0 = a
                    if b < t1:
                        t1 = b
            if t0 > t1 or t0 <= _T_MIN:
                return np.inf
            return t0
        # ellipsoid: the unit sphere after scaling each local axis by its radius
        sx, sy, sz = lx / hx, ly / hy, rz / hz
        sdx, sdy, sdz = ldx / hx, ldy / hy, dz / hz
        a = sdx * sdx + sdy * sdy + sdz * sdz
        b = sx * sdx + sy * sdy + sz * sdz
        c = sx * sx + sy * sy + sz * sz - 1.0
        disc = b * b - a * c
        if disc < 0.0:
            return np.inf
        t = (-b - math.sqrt(disc)) / a
        return t if t > _T_MIN else np.inf
    best = np.inf
    if kind == CYLINDER:
        a = dx * dx + dy * dy
        if a > 0.0:
            b = rx * dx + ry * dy
            c = rx * rx + ry * ry - hx * hx
            disc = b * b - a * c
            if disc >= 0.0:
                t = (-b - math.sqrt(disc)) / a
                if t > _T_MIN and abs(rz + t * dz) <= hz:
                    best = t
        if dz != 0.0:  # caps
            for zc in (hz, -hz):
                t = (zc - rz) / dz
                if _T_MIN < t < best:
                    px, py = rx + t * dx, ry + t * dy
                    if px * px + py * py <= hx * hx:
                        best = t
        return best
    # cone: x^2 + y^2 = (k (apex - z))^2 for z in [base, apex]
    k = hx / (2.0 * hz)
    az = hz - rz  # apex height above the ray origin, in the cone's frame
    k2 = k * k
    a = dx * dx + dy * dy - k2 * dz * dz
    b = rx * dx + ry * dy + k2 * az * dz
    c = rx * rx + ry * ry - k2 * az * az
    if a != 0.0:
        disc = b * b - a * c
        if disc >= 0.0:
            root = math.sqrt(disc)
            for t in ((-b - root) / a, (-b + root) / a):
                z = rz + t * dz
                if _T_MIN < t < best and -hz <= z <= hz:
                    best = t
    if dz != 0.0:
        t = (-hz - rz) / dz
        if _T_MIN < t < best:
            px, py = rx + t * dx, ry + t * dy
            if px * px + py * py <= hx * hx:
                best = t
    return best


@numba.njit(cache=True, inline="always")
def _normal(kind, prm, px, py, pz):
    """Outward unit normal of a primitive at surface point ``p`` (world frame)."""
    cx, cy, cz, hx, hy, hz, cs, sn = prm[0], prm[1], prm[2], prm[3], prm[4], prm[5], prm[6], prm[7]
    rx, ry, rz = px - cx, py - cy, pz - cz
    lx = cs * rx + sn * ry
    ly = -sn * rx + cs * ry
    if kind == BOX:
        ax, ay, az = abs(lx) / hx, abs(ly) / hy, abs(rz) / hz
        nx = ny = nz = 0.0
        if ax >= ay and ax >= az:
            nx = 1.0 if lx > 0 else -1.0
        elif ay >= az:
            ny = 1.0 if ly > 0 else -1.0
        else:
            nz = 1.0 if rz > 0 else -1.0
        return cs * nx - sn * ny, sn * nx + cs * ny, nz
    if kind == ELLIPSOID:
        nx, ny, nz = lx / (hx * hx), ly / (hy * hy), rz / (hz * hz)
        norm = math.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12
        nx, ny, nz = nx / norm, ny / norm, nz / norm
        return cs * nx - sn * ny, sn * nx + cs * ny, nz
    radial = math.sqrt(rx * rx + ry * ry) + 1e-12
    if kind == CYLINDER:
        if abs(rz - hz) < 1e-6 and radial < hx - 1e-6:
            return 0.0, 0.0, 1.0
        if abs(rz + hz) < 1e-6 and radial < hx - 1e-6:
            return 0.0, 0.0, -1.0
        return rx / radial, ry / radial, 0.0
    if abs(rz + hz) < 1e-6:
        return 0.0, 0.0, -1.0
    k = hx / (2.0 * hz)
    nx, ny, nz = rx / radial, ry / radial, k
    norm = math.sqrt(1.0 + k * k)
    return nx / norm, ny / norm, nz / norm


@numba.njit(parallel=True, cache=True)
def _cast_kernel(origin, directions, t_max, kinds, params, x0, y0, cell, nx, ny, z_lo, z_hi, start, items,
                 large, item_top, out_t, out_id, out_normal):
    ox, oy, oz = origin[0], origin[1], origin[2]
    x_hi = x0 + nx * cell
    y_hi = y0 + ny * cell
    for r in numba.prange(directions.shape[0]):
        dx, dy, dz = directions[r, 0], directions[r, 1], directions[r, 2]
        out_t[r] = np.inf
        out_id[r] = -1
        # clip the ray to the world's box
        t_enter, t_exit = 0.0, t_max
        for o, d, lo, hi in ((ox, dx, x0, x_hi), (oy, dy, y0, y_hi), (oz, dz, z_lo, z_hi)):
            if d == 0.0:
                if o < lo or o > hi:
                    t_exit = -1.0
            else:
                a = (lo - o) / d
                b = (hi - o) / d
                if a > b:
                    a, b = b, a
                t_enter = max(t_enter, a)
                t_exit = min(t_exit, b)
        if t_enter > t_exit:
            continue
        px = ox + t_enter * dx
        py = oy + t_enter * dy
        ix = min(max(int((px - x0) / cell), 0), nx - 1)
        iy = min(max(int((py - y0) / cell), 0), ny - 1)
        step_x = 1 if dx > 0 else -1
        step_y = 1 if dy > 0 else -1
        if dx != 0.0:
            next_x = x0 + (ix + (1 if dx > 0 else 0)) * cell
            t_next_x = (next_x - ox) / dx
            t_delta_x = cell / abs(dx)
        else:
            t_next_x = np.inf
            t_delta_x = np.inf
        if dy != 0.0:
            next_y = y0 + (iy + (1 if dy > 0 else 0)) * cell
            t_next_y = (next_y - oy) / dy
            t_delta_y = cell / abs(dy)
        else:
            t_next_y = np.inf
            t_delta_y = np.inf
        best = t_exit
        best_id = -1
        for p in large:
            t = _intersect(kinds[p], params[p], ox, oy, oz, dx, dy, dz)
            if t < best:
                best = t
                best_id = p
        cell_enter = t_enter
        while True:
            c = ix * ny + iy
            cell_exit = min(t_next_x, t_next_y)
            z_low = min(oz + cell_enter * dz, oz + min(cell_exit, best) * dz)
            for k in range(start[c], start[c + 1]):
                if item_top[k] < z_low:
                    break  # this and the remaining primitives of the cell are below the ray
                p = items[k]
                t = _intersect(kinds[p], params[p], ox, oy, oz, dx, dy, dz)
                if t < best:
                    best = t
                    best_id = p
            cell_enter = cell_exit
            if best <= cell_exit or cell_exit >= t_exit:
                break
            if t_next_x < t_next_y:
                ix += step_x
                t_next_x += t_delta_x
                if ix < 0 or ix >= nx:
                    break
            else:
                iy += step_y
                t_next_y += t_delta_y
                if iy < 0 or iy >= ny:
                    break
        if best_id >= 0:
            out_t[r] = best
            out_id[r] = best_id
            nxv, nyv, nzv = _normal(kinds[best_id], params[best_id], ox + best * dx, oy + best * dy, oz + best * dz)
            out_normal[r, 0] = nxv
            out_normal[r, 1] = nyv
            out_normal[r, 2] = nzv


def cast_rays(origin: np.ndarray, directions: np.ndarray, t_max: float, kinds: np.ndarray, params: np.ndarray,
              grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays leaving one origin.

    Parameters
    ----------
    origin : (3,) float64, the rays' common start.
    directions : (R, 3) float64 unit directions.
    t_max : float, rays end here (no hit beyond).
    kinds, params : the primitives (see the module docstring).
    grid : Grid built from the same primitives.

    Returns
    -------
    distance : (R,) float64, ``inf`` where nothing was hit.
    primitive : (R,) int32, ``-1`` where nothing was hit.
    normal : (R, 3) float32 outward unit normal at the hit (undefined where nothing was hit).
    """
    directions = np.ascontiguousarray(directions, dtype=np.float64)
    n = directions.shape[0]
    out_t = np.empty(n, dtype=np.float64)
    out_id = np.empty(n, dtype=np.int32)
    out_normal = np.zeros((n, 3), dtype=np.float32)
    _cast_kernel(np.asarray(origin, dtype=np.float64), directions, float(t_max), kinds, params, grid.x0, grid.y0,
                 grid.cell, grid.nx, grid.ny, grid.z_range[0], grid.z_range[1], grid.start, grid.items,
                 grid.large, grid.item_top, out_t, out_id, out_normal)
    return out_t, out_id, out_normal


def cast_rays_brute_force(origin: np.ndarray, directions: np.ndarray, t_max: float, kinds: np.ndarray,
                          params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference for tests: every ray against every primitive, no grid. Returns ``(distance, primitive)``."""
    directions = np.ascontiguousarray(directions, dtype=np.float64)
    return _brute_force_kernel(np.asarray(origin, dtype=np.float64), directions, float(t_max), kinds, params)


@numba.njit(parallel=True, cache=True)
def _brute_force_kernel(origin, directions, t_max, kinds, params):
    n = directions.shape[0]
    out_t = np.full(n, np.inf)
    out_id = np.full(n, -1, dtype=np.int32)
    for r in numba.prange(n):
        best = t_max
        for p in range(kinds.shape[0]):
            t = _intersect(kinds[p], params[p], origin[0], origin[1], origin[2],
                           directions[r, 0], directions[r, 1], directions[r, 2])
            if t < best:
                best = t
                out_id[r] = p
        if out_id[r] >= 0:
            out_t[r] = best
    return out_t, out_id


def hits_of_groups(origin: np.ndarray, directions: np.ndarray, ray_group: np.ndarray, group_start: np.ndarray,
                   group_items: np.ndarray, t_max: float, kinds: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Whether each ray hits any primitive of its own group, nothing else in the way (one call for many groups).

    Parameters
    ----------
    origin : (3,) float64, the rays' common start.
    directions : (R, 3) float64 unit directions.
    ray_group : (R,) int64 group of each ray.
    group_start : (G + 1,) int64; group ``g``'s primitives are ``group_items[group_start[g]:group_start[g + 1]]``.
    group_items : (M,) int64 primitive indices.
    t_max : float, rays end here.
    kinds, params : all primitives (see the module docstring).

    Returns
    -------
    (R,) bool.
    """
    directions = np.ascontiguousarray(directions, dtype=np.float64)
    return _group_kernel(np.asarray(origin, dtype=np.float64), directions, np.ascontiguousarray(ray_group),
                         np.ascontiguousarray(group_start), np.ascontiguousarray(group_items), float(t_max), kinds,
                         params)


@numba.njit(parallel=True, cache=True)
def _group_kernel(origin, directions, ray_group, group_start, group_items, t_max, kinds, params):
    n = directions.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    for r in numba.prange(n):
        g = ray_group[r]
        for k in range(group_start[g], group_start[g + 1]):
            p = group_items[k]
            t = _intersect(kinds[p], params[p], origin[0], origin[1], origin[2],
                           directions[r, 0], directions[r, 1], directions[r, 2])
            if t < t_max:
                out[r] = True
                break
    return out
