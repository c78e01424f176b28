"""The synthetic phantom's anatomy: every random choice of one case (body outline, fat, organ
positions, sizes and densities, noise, lesion hosts), drawn in a fixed order from one numpy
Generator, and the tissue codes. The layout is in fractions of the field of view (in-plane) and
of the scanned length (along z); `render` turns it into voxels."""
from __future__ import annotations

import math

import numpy as np

#: Tissue codes of the map returned with ``return_tissue=True`` (lesions are not a tissue:
#: lesion voxels keep the code of their organ and are marked in the label).
TISSUES = {"air": 0, "skin": 1, "fat": 2, "soft_tissue": 3, "lung": 4, "heart": 5, "liver": 6,
           "spleen": 7, "kidney": 8, "bladder": 9, "aorta": 10, "cortical_bone": 11,
           "cancellous_bone": 12, "brain": 13, "csf": 14, "disc": 15}
_T = TISSUES


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
