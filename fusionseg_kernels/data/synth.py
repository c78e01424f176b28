"""Synthetic whole-body CT volumes with lesion labels, and nnU-Net raw datasets made of them.

A case is drawn from a seed: body outline, fat thickness, organ positions and sizes, tissue
densities, noise level and lesions all come from a numpy `Generator` seeded with it, so the same
seed gives the same arrays (byte for byte on the same machine and numpy version; numpy is
single-threaded here, so the thread count plays no part).

The phantom, from the bottom slice (array index z = 0, inferior) to the top (superior): two
thighs with femurs, the pelvis with iliac bones and the bladder, the abdomen with liver, spleen,
kidneys, aorta and visceral fat, the thorax with lungs, heart and ribs, then neck and head (skull
and brain). The spine runs through the trunk. The anatomy is laid out in fractions of the field
of view (in-plane) and of the scanned length (along z), so any size shows the whole body; the
lesions are sized in millimetres (radius 2.5-35 mm, limited by their organ).

Array conventions: every volume is a numpy array in (z, y, x) order; `spacing` is (z, y, x) in
mm. SimpleITK's own conventions (origin and spacing in (x, y, z) order, direction as a row-major
3x3 matrix) apply only to `SyntheticCase.origin`, `SyntheticCase.direction` and the files. The
direction is the identity: x runs to the patient's left, y to posterior, z to superior (LPS).

Memory: a case holds its int16 image and uint8 label (3 bytes per voxel; plus 1 with
``return_tissue=True``); everything else is computed one axial slice at a time.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fusionseg_kernels import atomic
from fusionseg_kernels.errors import OutputFolderError, ParameterError

__all__ = ["SyntheticCase", "synthesize_ct", "write_case", "write_dataset", "TISSUES",
           "MAX_SIZE", "DEFAULT_SIZE", "DEFAULT_SPACING", "case_name", "has_lesions"]

#: Largest accepted size (z, y, x): 600 slices of 512 x 512.
MAX_SIZE = (600, 512, 512)
#: Default size (z, y, x) and spacing (z, y, x) in mm: a 410 mm field of view, 640 mm long.
DEFAULT_SIZE = (128, 256, 256)
DEFAULT_SPACING = (5.0, 1.6, 1.6)

#: Tissue codes of the map returned with ``return_tissue=True`` (lesions are not a tissue:
#: lesion voxels keep the code of their organ and are marked in the label).
TISSUES = {"air": 0, "skin": 1, "fat": 2, "soft_tissue": 3, "lung": 4, "heart": 5, "liver": 6,
           "spleen": 7, "kidney": 8, "bladder": 9, "aorta": 10, "cortical_bone": 11,
           "cancellous_bone": 12, "brain": 13, "csf": 14, "disc": 15}
_T = TISSUES

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_HU_MIN, _HU_MAX = -1024, 3071
_NOMINAL_LENGTH_MM = 1400.0   # organ z-extents are drawn as fractions of this body length
_NO_LESION_EVERY = 4          # seeds with seed % 4 == 3 have no lesion


@dataclass
class SyntheticCase:
    """One synthetic CT.

    image: int16 (z, y, x) in HU; label: uint8 (z, y, x), 1 on lesion voxels, 0 elsewhere;
    spacing: (z, y, x) mm; origin: (x, y, z) mm and direction: 9 floats (row-major 3x3), both in
    SimpleITK's convention; seed: the seed it was drawn from; lesions: one dict per lesion placed
    (organ, center_zyx voxel index, radii_mm, contrast_hu relative to the organ); tissue: uint8
    (z, y, x) codes of `TISSUES` when asked for, else None.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = _IDENTITY
    seed: int = 0
    lesions: list[dict] = field(default_factory=list)
    tissue: np.ndarray | None = None

    def to_sitk(self):
        """Returns (image, label) as SimpleITK images with this case's geometry."""
        return _to_sitk(self.image, self), _to_sitk(self.label, self)


def has_lesions(seed: int) -> bool:
    """Whether `synthesize_ct(seed=seed)` places lesions: every seed except those with
    seed % 4 == 3 (about one case in four has none)."""
    return seed % _NO_LESION_EVERY != _NO_LESION_EVERY - 1


def case_name(seed: int) -> str:
    """The case name `write_dataset` gives the case drawn from `seed`: ``synth_<seed, 5 digits>``."""
    return f"synth_{seed:05d}"


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_size(size) -> tuple[int, int, int]:
    try:
        vals = tuple(size)
    except TypeError:
        raise ParameterError(f"size must be three integers (z, y, x), got {size!r}.") from None
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals):
        raise ParameterError(f"size must be three integers (z, y, x), got {size!r}.")
    vals = tuple(int(v) for v in vals)
    if min(vals) < 1:
        raise ParameterError(f"size (z, y, x) = {vals} must be positive in every axis.")
    if any(v > m for v, m in zip(vals, MAX_SIZE)):
        raise ParameterError(f"size (z, y, x) = {vals} exceeds the largest supported size "
                             f"{MAX_SIZE} (at most 600 slices of 512 x 512).")
    return vals


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ParameterError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}.") from None
    if len(vals) != 3:
        raise ParameterError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}.")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ParameterError(f"spacing (z, y, x) = {vals} mm must be positive and finite in every axis.")
    return vals


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


# ----------------------------------------------------------------------------------------------
# the phantom's parameters


# Trunk, neck and head outline: (t, half-width a, half-depth b) as fractions of the in-plane
# half field of view R; t = 0 at the bottom slice, 1 at the top.
_PROFILE = np.array([
    (0.00, 0.78, 0.52), (0.10, 0.80, 0.52), (0.20, 0.84, 0.54), (0.35, 0.80, 0.55),
    (0.50, 0.82, 0.58), (0.62, 0.86, 0.60), (0.75, 0.88, 0.58), (0.835, 0.90, 0.55),
    (0.865, 0.55, 0.45), (0.885, 0.30, 0.32), (0.915, 0.30, 0.33), (0.94, 0.40, 0.48),
    (0.97, 0.42, 0.52), (1.00, 0.38, 0.46)], dtype=np.float64)


class _Organ:
    """A soft-tissue organ: a perturbed ellipsoid with a smooth (about 2 mm) boundary."""

    def __init__(self, name, code, hu, center, axes, pert, lesion_weight=0.0):
        self.name, self.code, self.hu = name, code, float(hu)
        self.cx, self.cy, self.ct = center          # normalized x, y (fractions of R) and t
        self.ax, self.ay, self.at = axes
        self.pert = np.asarray(pert, dtype=np.float64)  # (2, 4): base and slope along z
        self.lesion_weight = lesion_weight


class _Phantom:
    """Every random choice of one case, drawn in a fixed order from `rng` (independent of size)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.fa = u(0.88, 1.03)          # body width and depth factors
        self.fb = u(0.85, 1.08)
        self.fat_mm = u(6.0, 28.0) * self.fb
        self.outline = rng.normal(0.0, 0.02, size=(2, 6))   # cos/sin of 2θ, 3θ, 4θ at t = 0 and 1
        self.t_crotch = u(0.085, 0.11)
        self.hu = {
            "skin": u(0, 30), "fat": u(-115, -85), "soft": u(38, 52), "lung": u(-870, -820),
            "heart": u(35, 48), "liver": u(52, 70), "spleen": u(44, 56), "kidney": u(26, 36),
            "bladder": u(5, 15), "aorta": u(38, 50), "cortical": u(800, 1150),
            "cancellous": u(280, 380), "rib": u(450, 750), "brain": u(30, 40), "csf": u(5, 15),
            "disc": u(75, 100)}
        self.noise_sd = u(10.0, 20.0)
        self.tex = [(rng.normal(0, 1, 3) * np.array([14.0, 14.0, 9.0]), u(0, 2 * np.pi))
                    for _ in range(6)]       # wave vectors (x, y per R; t) and phases
        self.vert_phase = u(0, 1)
        a, b = self.trunk(0.56)
        j = lambda s: u(-s, s)  # noqa: E731
        g = lambda: u(0.88, 1.12)  # noqa: E731
        p = lambda: rng.normal(0.0, 0.07, size=(2, 4))  # noqa: E731
        h = self.hu
        self.organs = [
            _Organ("liver", _T["liver"], h["liver"], (-0.36 * a + j(0.03), -0.06 * b + j(0.03), 0.555 + j(0.01)),
                   (0.36 * a * g(), 0.60 * b * g(), 0.065 * g()), p(), 0.45),
            _Organ("liver", _T["liver"], h["liver"], (0.06 * a + j(0.03), -0.33 * b + j(0.03), 0.575 + j(0.01)),
                   (0.30 * a * g(), 0.22 * b * g(), 0.035 * g()), p(), 0.10),
            _Organ("spleen", _T["spleen"], h["spleen"], (0.56 * a + j(0.02), 0.25 * b + j(0.03), 0.565 + j(0.01)),
                   (0.15 * a * g(), 0.26 * b * g(), 0.04 * g()), p(), 0.15),
            _Organ("kidney", _T["kidney"], h["kidney"], (-0.30 * a + j(0.02), 0.30 * b + j(0.02), 0.465 + j(0.01)),
                   (0.13 * g(), 0.15 * g(), 0.04 * g()), p(), 0.15),
            _Organ("kidney", _T["kidney"], h["kidney"], (0.30 * a + j(0.02), 0.30 * b + j(0.02), 0.480 + j(0.01)),
                   (0.13 * g(), 0.15 * g(), 0.04 * g()), p(), 0.15),
            _Organ("bladder", _T["bladder"], h["bladder"], (j(0.03), -0.25 * b + j(0.03), 0.165 + j(0.01)),
                   (0.20 * a * g(), 0.22 * b * g(), 0.04 * g()), p()),
        ]
        a, b = self.trunk(0.68)
        self.heart = _Organ("heart", _T["heart"], h["heart"], (0.10 * a + j(0.02), -0.22 * b + j(0.02), 0.68 + j(0.01)),
                            (0.30 * a * g(), 0.36 * b * g(), 0.055 * g()), p())
        self.lung_base = 0.615 + j(0.01)
        self.lung_apex = 0.875 + j(0.005)
        self.lesions = self._draw_lesions(rng)

    def _draw_lesions(self, rng):
        n = int(rng.integers(1, 6))
        hosts = [o for o in self.organs if o.lesion_weight > 0]
        w = np.array([o.lesion_weight for o in hosts])
        out = []
        for _ in range(n):
            host = hosts[int(rng.choice(len(hosts), p=w / w.sum()))]
            d = rng.normal(size=3)
            d /= np.linalg.norm(d) + 1e-12
            frac = 0.55 * rng.uniform() ** (1 / 3)
            r_mm = math.exp(rng.uniform(math.log(2.5), math.log(35.0)))
            ratios = rng.uniform(0.7, 1.3, size=3)
            ratios[0] = 1.0
            q = rng.normal(size=4)
            q /= np.linalg.norm(q)
            contrast = rng.uniform(-30, -8) if rng.uniform() < 0.6 else rng.uniform(10, 60)
            lob = rng.normal(0.0, 0.08, size=3)
            out.append(dict(host=host, dir=d, frac=frac, r_mm=r_mm, ratios=ratios,
                            rot=_quat_to_matrix(q), contrast=contrast, lob=lob))
        return out

    def trunk(self, t: float) -> tuple[float, float]:
        a = float(np.interp(t, _PROFILE[:, 0], _PROFILE[:, 1])) * self.fa
        b = float(np.interp(t, _PROFILE[:, 0], _PROFILE[:, 2])) * self.fb
        return min(a, 0.92), min(b, 0.70)


def _quat_to_matrix(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ----------------------------------------------------------------------------------------------
# rendering, one axial slice at a time


class _Grid:
    """Normalized in-plane coordinates: X[i] (x) and Y[j] (y), in fractions of R (mm)."""

    def __init__(self, size, spacing):
        nz, ny, nx = size
        sz, sy, sx = spacing
        self.nz, self.ny, self.nx = nz, ny, nx
        self.sz, self.sy, self.sx = sz, sy, sx
        self.R = 0.5 * min(nx * sx, ny * sy)
        self.X = ((np.arange(nx) + 0.5 - nx / 2) * sx / self.R).astype(np.float32)
        self.Y = ((np.arange(ny) + 0.5 - ny / 2) * sy / self.R).astype(np.float32)

    def xr(self, lo, hi):
        """Index range [i0, i1) of x columns with lo <= X <= hi (clipped to the image)."""
        f = lambda v: v * self.R / self.sx + self.nx / 2 - 0.5  # noqa: E731
        return max(0, math.floor(f(lo))), min(self.nx, math.ceil(f(hi)) + 1)

    def yr(self, lo, hi):
        f = lambda v: v * self.R / self.sy + self.ny / 2 - 0.5  # noqa: E731
        return max(0, math.floor(f(lo))), min(self.ny, math.ceil(f(hi)) + 1)


def _harmonics(dx, dy):
    """cos/sin of 2θ, 3θ, 4θ for the angle θ of (dx, dy), without trigonometric calls."""
    r2 = dx * dx + dy * dy
    r2 = np.where(r2 > 0, r2, np.float32(1.0))
    inv = np.float32(1.0) / np.sqrt(r2)
    c, s = dx * inv, dy * inv
    c2, s2 = c * c - s * s, 2 * c * s
    c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
    c4, s4 = c2 * c2 - s2 * s2, 2 * c2 * s2
    return (c2, s2, c3, s3, c4, s4)


class _Renderer:
    def __init__(self, ph: _Phantom, grid: _Grid, lesions: bool):
        self.ph, self.g = ph, grid
        g = grid
        # Outline harmonics around the body axis, and the texture's plane waves, once per case.
        self.harm = _harmonics(g.X[None, :], g.Y[:, None])
        self.tex_c, self.tex_s, self.tex_kt = [], [], []
        for k, phase in ph.tex:
            arg = (k[0] * g.X[None, :] + k[1] * g.Y[:, None]).astype(np.float64) + phase
            self.tex_c.append(np.cos(arg).astype(np.float32))
            self.tex_s.append(np.sin(arg).astype(np.float32))
            self.tex_kt.append(k[2])
        self.lesions = self._place_lesions() if lesions else []

    # -- lesion placement in voxel space -------------------------------------------------------
    def _place_lesions(self):
        g, out = self.g, []
        length_mm = g.nz * g.sz
        for les in self.ph.lesions:
            o = les["host"]
            d, f = les["dir"], les["frac"]
            xn, yn, tn = o.cx + d[0] * f * o.ax, o.cy + d[1] * f * o.ay, o.ct + d[2] * f * o.at
            ci = round(xn * g.R / g.sx + g.nx / 2 - 0.5)
            cj = round(yn * g.R / g.sy + g.ny / 2 - 0.5)
            ck = round(tn * g.nz - 0.5)
            if not (0 <= ci < g.nx and 0 <= cj < g.ny and 0 <= ck < g.nz):
                continue
            organ_mm = min(o.ax * g.R, o.ay * g.R, o.at * length_mm)
            r = min(les["r_mm"], 0.5 * organ_mm)    # the center voxel is always inside
            radii = r * les["ratios"]
            out.append(dict(host=o, center=(ck, cj, ci), radii=radii, rot=les["rot"],
                            contrast=les["contrast"], lob=les["lob"],
                            reach=float(radii.max()) * (1 + 3 * float(np.abs(les["lob"]).max()))))
        return out

    # -- one slice -----------------------------------------------------------------------------
    def render(self, k: int, hu: np.ndarray, tis: np.ndarray, lab: np.ndarray, noise: np.ndarray):
        """Fills hu (float32 (y, x), HU without noise), tis (uint8 codes) and lab (uint8) of
        slice k, then adds `noise`."""
        ph, g = self.ph, self.g
        t = (k + 0.5) / g.nz
        hu.fill(-1000.0)
        tis.fill(_T["air"])
        lab.fill(0)
        tex = np.zeros_like(hu)
        for c, s, kt in zip(self.tex_c, self.tex_s, self.tex_kt):
            tex += c * np.float32(math.cos(kt * t)) - s * np.float32(math.sin(kt * t))
        tex *= np.float32(1 / math.sqrt(3.0))       # about unit variance
        if t < ph.t_crotch:
            self._legs(t, hu, tis)
        else:
            self._trunk(t, hu, tis, tex)
        for les in self.lesions:
            self._lesion(k, les, hu, tis, lab, tex)
        hu += noise

    def _trunk(self, t, hu, tis, tex):
        ph, g, ph_hu = self.ph, self.g, self.ph.hu
        a, b = ph.trunk(t)
        w = min(max(t, 0.0), 1.0)
        co = ph.outline[0] * (1 - w) + ph.outline[1] * w
        reach = 1.0 + float(np.abs(co).sum())        # the outline's largest radius
        j0, j1 = g.yr(-b * reach, b * reach)
        i0, i1 = g.xr(-a * reach, a * reach)
        if j0 >= j1 or i0 >= i1:
            return
        sl = (slice(j0, j1), slice(i0, i1))
        X, Y = g.X[None, i0:i1], g.Y[j0:j1, None]
        pert = np.float32(1.0)
        for cf, hm in zip(co, self.harm):
            pert = pert + np.float32(cf) * hm[sl]
        rr = np.sqrt((X / np.float32(a)) ** 2 + (Y / np.float32(b)) ** 2) / pert
        h, ti = hu[sl], tis[sl]
        scale = g.R * math.sqrt(a * b)              # mm per unit of rr
        head = t > 0.86
        skin = 2.0 / scale
        fat = (ph.fat_mm * (0.2 if head else 1.0)) / scale
        body = rr < 1
        h[body], ti[body] = ph_hu["skin"], _T["skin"]
        m = rr < 1 - skin
        h[m], ti[m] = ph_hu["fat"], _T["fat"]
        inner = rr < 1 - skin - fat
        h[inner], ti[inner] = ph_hu["soft"], _T["soft_tissue"]
        h[inner] += np.float32(4.0) * tex[sl][inner]
        if 0.15 < t < 0.60:                          # visceral fat inside the abdominal wall
            vis = (rr < 1 - skin - fat - 12.0 / scale) & (tex[sl] > 0.6)
            h[vis], ti[vis] = ph_hu["fat"] + 10.0, _T["fat"]
        if t > 0.935:
            self._skull(rr, 1 - skin - fat, h, ti, scale)
            return
        self._lungs(t, a, b, h, ti, X, Y, rr)
        for o in self.ph.organs:
            self._organ(o, t, h, ti, X, Y, tex[sl], i0, j0)
        self._organ(self.ph.heart, t, h, ti, X, Y, tex[sl], i0, j0)
        if 0.25 < t < 0.78:
            self._disc_shape(h, ti, X, Y, 0.05, 0.30 * b - 0.15, 12.0 / g.R, ph_hu["aorta"], _T["aorta"])
        if 0.12 < t < 0.93:
            self._spine(t, b, h, ti, X, Y, rr)
        if 0.585 < t < 0.86:
            self._ribs(t, h, ti, Y, X, rr, scale)
        if 0.13 < t < 0.30:
            self._ilium(t, a, b, h, ti, X, Y)
        if t < 0.15:
            for side in (-1, 1):
                self._bone_disc(h, ti, X, Y, side * 0.42 * a, 0.0, 0.085, 5.0 / g.R)

    def _legs(self, t, hu, tis):
        ph, g, H = self.ph, self.g, self.ph.hu
        a, b = ph.trunk(t)
        la, lb = 0.36 * a, 0.85 * b
        for side in (-1, 1):
            cx = side * 0.44 * a
            j0, j1 = g.yr(-lb, lb)
            i0, i1 = g.xr(cx - la, cx + la)
            if j0 >= j1 or i0 >= i1:
                continue
            sl = (slice(j0, j1), slice(i0, i1))
            X, Y = g.X[None, i0:i1], g.Y[j0:j1, None]
            rr = np.sqrt(((X - np.float32(cx)) / np.float32(la)) ** 2 + (Y / np.float32(lb)) ** 2)
            h, ti = hu[sl], tis[sl]
            scale = g.R * math.sqrt(la * lb)
            m = rr < 1
            h[m], ti[m] = H["skin"], _T["skin"]
            m = rr < 1 - 2.0 / scale
            h[m], ti[m] = H["fat"], _T["fat"]
            m = rr < 1 - (2.0 + ph.fat_mm * 0.8) / scale
            h[m], ti[m] = H["soft"], _T["soft_tissue"]
            self._bone_disc(h, ti, X, Y, cx, 0.05 * lb, 0.07, 5.0 / g.R)

    def _lungs(self, t, a, b, h, ti, X, Y, rr):
        ph = self.ph
        if not ph.lung_base - 0.02 < t < ph.lung_apex:
            return
        mid = 0.70
        s = 1.0 if t < mid else math.sqrt(max(0.0, 1 - ((t - mid) / (ph.lung_apex - mid)) ** 2))
        if s <= 0.02:
            return
        for side in (-1, 1):
            cx, cy = side * 0.46 * a, 0.06 * b
            la, lb = 0.33 * a * s, 0.68 * b * s
            q = ((X - np.float32(cx)) / np.float32(la)) ** 2 + ((Y - np.float32(cy)) / np.float32(lb)) ** 2
            dome = ph.lung_base + (0.004 if side < 0 else 0.0) + 0.035 * (1 - q)
            m = (q < 1) & (t > dome) & (rr < 0.9)
            # denser dependent (posterior) lung: up to +40 HU towards the back
            grad = np.float32(40.0) * np.clip((Y - np.float32(cy)) / np.float32(lb), 0, 1)
            h[m] = (np.float32(ph.hu["lung"]) + np.broadcast_to(grad, m.shape))[m]
            ti[m] = _T["lung"]

    def _organ(self, o: _Organ, t, h, ti, X, Y, tex, i0, j0):
        dt = (t - o.ct) / o.at
        if abs(dt) >= 1:
            return
        s = math.sqrt(1 - dt * dt)
        g = self.g
        ax, ay = o.ax * s, o.ay * s
        ii0, ii1 = g.xr(o.cx - ax * 1.4, o.cx + ax * 1.4)
        jj0, jj1 = g.yr(o.cy - ay * 1.4, o.cy + ay * 1.4)
        ii0, ii1, jj0, jj1 = ii0 - i0, ii1 - i0, jj0 - j0, jj1 - j0
        ii0, jj0 = max(ii0, 0), max(jj0, 0)
        ii1, jj1 = min(ii1, h.shape[1]), min(jj1, h.shape[0])
        if ii0 >= ii1 or jj0 >= jj1:
            return
        sl = (slice(jj0, jj1), slice(ii0, ii1))
        dx = (X[:, ii0:ii1] - np.float32(o.cx)) / np.float32(o.ax)
        dy = (Y[jj0:jj1, :] - np.float32(o.cy)) / np.float32(o.ay)
        rho = np.sqrt(dx * dx + dy * dy)
        coef = np.clip(o.pert[0] + o.pert[1] * dt, -0.3, 0.3)
        pert = np.float32(1.0)
        for cf, hm in zip(coef, _harmonics(dx, dy)[:4]):
            pert = pert + np.float32(cf) * hm
        lev = rho / (np.float32(s) * pert)
        dist_mm = (lev - 1) * np.float32(s * math.sqrt(o.ax * o.ay) * g.R)
        w = np.clip(0.5 - dist_mm / np.float32(2.0), 0, 1)    # 2 mm soft edge
        hh, tt = h[sl], ti[sl]
        val = np.float32(o.hu) + np.float32(3.0) * tex[sl]
        hh += w * (val - hh)
        tt[lev < 1] = o.code

    def _disc_shape(self, h, ti, X, Y, cx, cy, r, val, code):
        m = (X - np.float32(cx)) ** 2 + (Y - np.float32(cy)) ** 2 < np.float32(r * r)
        h[m], ti[m] = val, code

    def _bone_disc(self, h, ti, X, Y, cx, cy, r, rim):
        d2 = (X - np.float32(cx)) ** 2 + (Y - np.float32(cy)) ** 2
        m = d2 < np.float32(r * r)
        h[m], ti[m] = self.ph.hu["cortical"], _T["cortical_bone"]
        ri = max(r - rim, 0.0)
        m = d2 < np.float32(ri * ri)
        h[m], ti[m] = self.ph.hu["cancellous"], _T["cancellous_bone"]

    def _spine(self, t, b, h, ti, X, Y, rr):
        g, H = self.g, self.ph.hu
        cerv = t > 0.84
        rv = 0.06 if cerv else 0.085
        yv = 0.36 * b
        rim = max(2.0, 1.2 * min(g.sx, g.sy)) / g.R
        phase = ((t - 0.12) / (0.81 / 24) + self.ph.vert_phase) % 1.0
        if phase > 0.82:
            self._disc_shape(h, ti, X, Y, 0.0, yv, rv, H["disc"], _T["disc"])
        else:
            self._bone_disc(h, ti, X, Y, 0.0, yv, rv, rim)
        yc, rc = yv + rv + 0.042, 0.034
        ring = 0.058
        d2 = X ** 2 + (Y - np.float32(yc)) ** 2
        m = (d2 < np.float32(ring * ring)) & (rr < 0.95)
        h[m], ti[m] = H["cortical"], _T["cortical_bone"]
        m = (np.abs(X) < 0.018) & (Y > yc) & (Y < yc + ring + 0.07) & (rr < 0.9)
        h[m], ti[m] = H["cortical"], _T["cortical_bone"]
        m = d2 < np.float32(rc * rc)
        h[m], ti[m] = H["csf"], _T["csf"]

    def _ribs(self, t, h, ti, Y, X, rr, scale):
        ph, g = self.ph, self.g
        thick = max(8.0, 1.5 * max(g.sx, g.sy)) / scale
        band = (rr > 0.80) & (rr < 0.80 + thick)
        if not band.any():
            return
        dx = np.broadcast_to(X, rr.shape)[band]
        dy = np.broadcast_to(Y, rr.shape)[band]
        cos_post = dy / np.sqrt(dx * dx + dy * dy + np.float32(1e-12))
        gpos = (1 - cos_post) / 2                     # 0 at the back, 1 at the front
        on = np.zeros(dx.shape, dtype=bool)
        half = max(0.0055, 0.45 / g.nz)
        for r in range(12):
            tk = 0.855 - r * 0.022
            on |= np.abs(t - (tk - 0.035 * gpos)) < half
        on &= cos_post > -0.82                        # no bone at the front (costal cartilage)
        idx = np.flatnonzero(band.ravel())[on]
        h.ravel()[idx] = ph.hu["rib"]
        ti.ravel()[idx] = _T["cortical_bone"]

    def _ilium(self, t, a, b, h, ti, X, Y):
        g = self.g
        s = 1.0 - abs(t - 0.23) / 0.09
        if s <= 0:
            return
        thick = max(6.0, 1.5 * max(g.sx, g.sy)) / g.R
        for side in (-1, 1):
            cx, cy = side * 0.52 * a, 0.18 * b
            ea, eb = 0.22 * a * (0.6 + 0.4 * s), 0.32 * b * (0.6 + 0.4 * s)
            q = np.sqrt(((X - np.float32(cx)) / np.float32(ea)) ** 2 + ((Y - np.float32(cy)) / np.float32(eb)) ** 2)
            m = np.abs(q - 1) < np.float32(thick / math.sqrt(ea * eb) / 2)
            m &= (side * (X - np.float32(cx)) > -0.3 * ea) & (Y < cy + 0.2 * eb)
            h[m], ti[m] = self.ph.hu["cortical"] * 0.8, _T["cortical_bone"]

    def _skull(self, rr, inner, h, ti, scale):
        bone = 7.0 / scale
        m = rr < inner
        h[m], ti[m] = self.ph.hu["cortical"], _T["cortical_bone"]
        m = rr < inner - bone
        h[m], ti[m] = self.ph.hu["brain"], _T["brain"]

    def _lesion(self, k, les, hu, tis, lab, tex):
        g = self.g
        ck, cj, ci = les["center"]
        dz = (k - ck) * g.sz
        reach = les["reach"]
        if abs(dz) > reach:
            return
        j0, j1 = max(0, cj - math.ceil(reach / g.sy)), min(g.ny, cj + math.ceil(reach / g.sy) + 1)
        i0, i1 = max(0, ci - math.ceil(reach / g.sx)), min(g.nx, ci + math.ceil(reach / g.sx) + 1)
        dy = ((np.arange(j0, j1) - cj) * g.sy)[:, None]
        dx = ((np.arange(i0, i1) - ci) * g.sx)[None, :]
        rot = les["rot"]                              # columns: lesion axes in (x, y, z) mm
        q = [rot[0, a] * dx + rot[1, a] * dy + rot[2, a] * dz for a in range(3)]
        r = les["radii"]
        f = (q[0] / r[0]) ** 2 + (q[1] / r[1]) ** 2 + (q[2] / r[2]) ** 2
        n = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        n = np.where(n > 0, n, 1.0)
        e = les["lob"]
        lob = 1 + e[0] * (q[0] * q[1]) / n ** 2 * 2 + e[1] * (q[1] * q[2]) / n ** 2 * 2 \
            + e[2] * (q[0] ** 2 - q[1] ** 2) / n ** 2
        sl = (slice(j0, j1), slice(i0, i1))
        m = (f <= lob * lob) & (tis[sl] == les["host"].code)
        if not m.any():
            return
        h = hu[sl]
        h[m] = np.float32(les["host"].hu + les["contrast"]) + np.float32(2.0) * tex[sl][m]
        lab[sl][m] = 1


def _smoothing_kernel(sigma_px: float):
    from scipy.ndimage import gaussian_filter1d

    delta = np.zeros(33)
    delta[16] = 1.0
    k = gaussian_filter1d(delta, sigma_px, mode="constant")
    return 1.0 / float(np.sum(k * k))       # restores the std after the 2-D filter


def synthesize_ct(size: Sequence[int] = DEFAULT_SIZE, spacing: Sequence[float] = DEFAULT_SPACING,
                  seed: int = 0, lesions: bool = True, *, return_tissue: bool = False) -> SyntheticCase:
    """Draws one synthetic whole-body CT.

    size: (z, y, x) voxels, each >= 1 and at most `MAX_SIZE` = (600, 512, 512); spacing: (z, y,
    x) mm, positive; seed: non-negative integer; lesions: False gives the same body without
    lesions (otherwise seeds with seed % 4 == 3 have none, see `has_lesions`); return_tissue:
    also return the uint8 (z, y, x) tissue map (codes in `TISSUES`).

    Returns a `SyntheticCase` with image int16 (z, y, x) HU in [-1024, 3071] and label uint8
    (z, y, x), 1 exactly on the voxels whose density was set by a lesion.
    """
    from scipy.ndimage import gaussian_filter

    size = _check_size(size)
    spacing = _check_spacing(spacing)
    seed = _check_seed(seed)
    root = np.random.SeedSequence(seed)
    ss_anat, ss_noise = root.spawn(2)
    ph = _Phantom(np.random.default_rng(ss_anat))
    grid = _Grid(size, spacing)
    rend = _Renderer(ph, grid, lesions=bool(lesions) and has_lesions(seed))

    nz, ny, nx = size
    image = np.empty(size, dtype=np.int16)
    label = np.empty(size, dtype=np.uint8)
    tissue = np.empty(size, dtype=np.uint8) if return_tissue else None
    hu = np.empty((ny, nx), dtype=np.float32)
    tis = np.empty((ny, nx), dtype=np.uint8)
    noise = np.empty((ny, nx), dtype=np.float32)
    sigma_px = 0.7
    noise_gain = np.float32(ph.noise_sd * _smoothing_kernel(sigma_px))
    for k, ss in enumerate(ss_noise.spawn(nz)):
        np.random.default_rng(ss).standard_normal(out=noise, dtype=np.float32)
        gaussian_filter(noise, sigma_px, output=noise, mode="reflect", truncate=4.0)
        noise *= noise_gain
        rend.render(k, hu, tis, label[k], noise)
        np.clip(np.rint(hu, out=hu), _HU_MIN, _HU_MAX, out=hu)
        image[k] = hu
        if tissue is not None:
            tissue[k] = tis
    sz, sy, sx = spacing
    origin = (-(nx / 2 - 0.5) * sx, -(ny / 2 - 0.5) * sy, -(nz / 2 - 0.5) * sz)
    info = [dict(organ=l["host"].name, center_zyx=tuple(int(c) for c in l["center"]),
                 radii_mm=tuple(float(r) for r in l["radii"]), contrast_hu=float(l["contrast"]))
            for l in rend.lesions]
    return SyntheticCase(image=image, label=label, spacing=spacing, origin=origin,
                         direction=_IDENTITY, seed=seed, lesions=info, tissue=tissue)


# ----------------------------------------------------------------------------------------------
# files


_MULTI_FILE = (".mhd", ".hdr", ".img", ".img.gz")


def _to_sitk(arr: np.ndarray, case: SyntheticCase):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)                 # (z, y, x) array -> image of size (x, y, z)
    img.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in case.origin))
    img.SetDirection(tuple(float(d) for d in case.direction))
    return img


def _extension(path: str) -> str:
    name = os.path.basename(path).lower()
    for ext in (".nii.gz", ".img.gz"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def write_image_atomic(img, path: str | os.PathLike) -> None:
    """Writes a SimpleITK image to `path` through a temporary file in the same folder, then
    renames it, so `path` is either absent, the old file or the complete new one. Creates the
    folder. Single-file formats only (.nii.gz, .nii, .mha, .nrrd, ...)."""
    import SimpleITK as sitk

    path = os.fspath(path)
    ext = _extension(path)
    if ext in _MULTI_FILE or not ext:
        raise OutputFolderError(f"cannot write {path}: use a single-file image format such as "
                                f".nii.gz, .nii, .mha or .nrrd.")
    try:
        with atomic.atomic_output(path) as tmp:
            sitk.WriteImage(img, str(tmp), True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise OutputFolderError(f"SimpleITK could not write {path} "
                                f"({first[-1] if first else 'unknown error'}).") from None


def write_case(case: SyntheticCase, image_path: str | os.PathLike,
               label_path: str | os.PathLike | None = None) -> None:
    """Writes the case's image (and label, when a path is given) with SimpleITK, each atomically;
    the format follows the extension (.nii.gz, .nii, .mha, .nrrd, ...). Spacing is written in
    SimpleITK's (x, y, z) order, so reading back gives (z, y, x) arrays of the same shape."""
    write_image_atomic(_to_sitk(case.image, case), image_path)
    if label_path is not None:
        write_image_atomic(_to_sitk(case.label, case), label_path)


def write_dataset(out_dir: str | os.PathLike, n: int = 4, size: Sequence[int] = DEFAULT_SIZE,
                  spacing: Sequence[float] = DEFAULT_SPACING, seed: int = 0) -> list[str]:
    """Writes an nnU-Net v2 raw dataset of `n` synthetic cases into `out_dir`:
    imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz and dataset.json. Case i is drawn with
    seed `seed + i` and named `case_name(seed + i)` (synth_00000, synth_00001, ...).

    size: (z, y, x); spacing: (z, y, x) mm. Refuses a folder whose imagesTr/labelsTr already hold
    other cases (dataset.json would not match them). Returns the case names.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ParameterError(f"the number of cases must be a positive integer, got {n!r}.")
    size = _check_size(size)
    spacing = _check_spacing(spacing)
    seed = _check_seed(seed)
    out_dir = os.fspath(out_dir)
    names = [case_name(seed + i) for i in range(int(n))]
    images, labels = os.path.join(out_dir, "imagesTr"), os.path.join(out_dir, "labelsTr")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputFolderError(f"cannot write the dataset into {out_dir}: it is a file, not a folder.")
    for folder in (images, labels):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise OutputFolderError(f"cannot create the folder {folder}: {err.strerror or err}.") from None
        if not os.access(folder, os.W_OK):
            raise OutputFolderError(f"cannot write into the folder {folder}: permission denied.")
    expected = {f"{c}_0000.nii.gz" for c in names} | {f"{c}.nii.gz" for c in names}
    others = sorted(f for folder in (images, labels) for f in os.listdir(folder)
                    if f.endswith(".nii.gz") and not f.startswith(".") and f not in expected)
    if others:
        raise OutputFolderError(f"{out_dir} already holds other cases ({', '.join(others[:3])}"
                                f"{', ...' if len(others) > 3 else ''}); write into an empty folder.")
    for i, name in enumerate(names):
        case = synthesize_ct(size, spacing, seed + i)
        write_case(case, os.path.join(images, f"{name}_0000.nii.gz"), os.path.join(labels, f"{name}.nii.gz"))
        del case
    meta = {
        "name": "SyntheticWholeBodyCT",
        "description": f"{n} synthetic whole-body CT cases with lesion labels (fusionseg synth, "
                       f"seeds {seed}..{seed + n - 1}, size z, y, x = {list(size)}, "
                       f"spacing z, y, x = {list(spacing)} mm)",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": int(n),
        "file_ending": ".nii.gz",
    }
    atomic.write_json(os.path.join(out_dir, "dataset.json"), meta)
    return names


def run_cli(args) -> int:
    """`fusionseg synth -o DIR [-n N] [--size Z Y X] [--spacing Z Y X] [--seed S]`."""
    import time

    t0 = time.perf_counter()
    size = DEFAULT_SIZE if args.size is None else tuple(args.size)
    spacing = DEFAULT_SPACING if args.spacing is None else tuple(args.spacing)
    names = write_dataset(args.output, n=args.n, size=size, spacing=spacing, seed=args.seed)
    no_lesion = [c for i, c in enumerate(names) if not has_lesions(args.seed + i)]
    what = f"1 case ({names[0]}" if len(names) == 1 else f"{len(names)} cases ({names[0]} .. {names[-1]}"
    print(f"wrote {what}; size z, y, x = {size}, "
          f"spacing z, y, x = {spacing} mm) to {args.output}: imagesTr/, labelsTr/, "
          f"dataset.json in {time.perf_counter() - t0:.1f} s")
    if no_lesion:
        print(f"cases without lesions: {', '.join(no_lesion)}")
    return 0
