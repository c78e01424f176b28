"""Rendering a phantom (`phantom._Phantom`) into HU, tissue and lesion-label voxels, one axial
slice at a time (memory stays at a few slices whatever the volume's size)."""
from __future__ import annotations

import math

import numpy as np

from .phantom import _T, _Organ, _Phantom


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
