"""When do more labels stop paying off? A saturating learning curve fitted to the rounds so far.

    mAP50(n) = a - b * n^(-c)        a: the plateau, b >= 0, c > 0; n = images (or boxes) labelled

The power law is the usual shape of a learning curve in the labelled-set size (Hestness et al. 2017,
"Deep learning scaling is predictable, empirically"; Figueroa et al. 2012 for small samples). Fitted
by least squares: for a fixed c the model is linear in (a, b), so (a, b) have a closed form, and c
is the best of a fine log-spaced grid over [C_MIN, C_MAX] (all grid values at once, vectorised). The
constraints 0 <= a <= 1 and b >= 0 are kept by solving on the boundary when the free solution
leaves them.

The interval is a parametric bootstrap: refit on fitted values plus Gaussian noise of the residuals'
scale, sigma = max(residual std (k - 3 degrees of freedom), NOISE_FLOOR), and take percentiles of
what the refits predict. With three rounds the fit is exact and the residuals say nothing, so the
floor sets the scale: NOISE_FLOOR = 0.02 mAP50 is our choice, the size of the run-to-run noise of a
mAP50 measured on a test set of ~70 images; from five rounds on, the residuals usually exceed it.

What it answers: `forecast` (the next budget's mAP50 and gain, the plateau, the labels needed for
95% of it), `backtest` (fit on the first k rounds, predict the rest: the forecast error that a
benchmark reports) and `forecast_line` (one line for the CLI after each round).

Written by hand: the fit, the bootstrap and the wording; numpy does the arithmetic (scipy is not a
dependency of boxloop; its curve_fit would need starting values and bounds all the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["PowerLaw", "fit_power_law", "forecast", "backtest", "forecast_line", "NOISE_FLOOR", "MIN_POINTS"]

C_MIN, C_MAX = 0.05, 3.0
NOISE_FLOOR = 0.02
MIN_POINTS = 3
LEVEL = 0.9  # two-sided interval


@dataclass(frozen=True)
class PowerLaw:
    """a - b * n^(-c), fitted on `points` (n, y) pairs with sum of squared residuals `sse`."""

    a: float
    b: float
    c: float
    sse: float
    points: int

    def __call__(self, n: float | np.ndarray) -> np.ndarray:
        return self.a - self.b * np.power(np.asarray(n, np.float64), -self.c)

    def labels_for(self, share: float) -> float:
        """n at which the curve reaches `share` of its plateau a (inf when it never does)."""
        gap = (1.0 - share) * self.a
        if self.b <= 0:
            return 0.0
        if gap <= 0:
            return math.inf
        return float((self.b / gap) ** (1.0 / self.c))


def _ab(u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, sse) of y ~ a - b*u with 0 <= a <= 1, b >= 0, for every row of u (G, k) at once.

    The constrained optimum is the free one when feasible, else lies on a bound: b = 0 (a flat line
    at the mean), or a = 0 or a = 1 with b by least squares; the best feasible candidate wins."""
    um = u.mean(axis=1, keepdims=True)
    ym = y.mean()
    du = u - um
    var = (du * du).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_free = np.where(var > 0, -(du * (y - ym)).sum(axis=1) / var, 0.0)
    uu = (u * u).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b0 = np.where(uu > 0, np.maximum(0.0, ((0.0 - y) * u).sum(axis=1) / uu), 0.0)
        b1 = np.where(uu > 0, np.maximum(0.0, ((1.0 - y) * u).sum(axis=1) / uu), 0.0)
    g = u.shape[0]
    a_c = np.stack([ym + b_free * um[:, 0], np.full(g, ym), np.zeros(g), np.ones(g)], axis=1)  # (G, 4)
    b_c = np.stack([b_free, np.zeros(g), b0, b1], axis=1)
    feasible = (a_c >= -1e-12) & (a_c <= 1 + 1e-12) & (b_c >= -1e-12)
    a_c, b_c = np.clip(a_c, 0.0, 1.0), np.maximum(b_c, 0.0)
    resid = y[None, None, :] - (a_c[:, :, None] - b_c[:, :, None] * u[:, None, :])
    sse = np.where(feasible, (resid * resid).sum(axis=2), np.inf)
    j = np.argmin(sse, axis=1)
    rows = np.arange(g)
    return a_c[rows, j], b_c[rows, j], sse[rows, j]


GRID = np.exp(np.linspace(math.log(C_MIN), math.log(C_MAX), 400))  # 1% apart: finer than c is known


def fit_power_law(n: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least-squares a - b n^-c through the points (n > 0); needs MIN_POINTS distinct n."""
    n = np.asarray(n, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[ok], y[ok]
    if np.unique(n).shape[0] < MIN_POINTS:
        raise ValueError(f"a learning-curve fit needs at least {MIN_POINTS} rounds with different label counts, "
                         f"got {np.unique(n).shape[0]}")
    scale = float(n.max())  # fit on n / max: n^-c stays near 1, the linear step well conditioned
    x = n / scale
    a, b, sse = _ab(np.power(x[None, :], -GRID[:, None]), y)
    i = int(np.argmin(sse))
    c = float(GRID[i])
    return PowerLaw(a=float(a[i]), b=float(b[i]) * scale ** c, c=c, sse=float(sse[i]), points=int(n.shape[0]))


def _interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo = (1 - level) / 2
    return float(np.quantile(samples, lo)), float(np.quantile(samples, 1 - lo))


def forecast(n: Sequence[float], y: Sequence[float], n_next: float | Sequence[float] | None = None,
             boots: int = 200, noise_floor: float = NOISE_FLOOR, seed: int = 0) -> dict[str, Any]:
    """The fit on (n, y), and what it says about `n_next` (default: one more step of the last size).

    Returns the fit (a, b, c), sigma (the bootstrap's noise scale), and for each n_next: the
    predicted mAP50 with its LEVEL interval, the gain over the fitted value at the last n with its
    interval; the plateau a with its interval, the share of it reached now, and the labels that 95%
    of it would take."""
    n = np.asarray(n, np.float64)
    y = np.asarray(y, np.float64)
    f = fit_power_law(n, y)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[ok], y[ok]
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    if n_next is None:
        step = n[-1] - n[-2] if n.shape[0] > 1 else n[-1]
        n_next = [n[-1] + step]
    nxt = np.atleast_1d(np.asarray(n_next, np.float64))
    dof = n.shape[0] - 3
    resid_sd = math.sqrt(f.sse / dof) if dof > 0 else 0.0
    sigma = max(resid_sd, noise_floor)
    rng = np.random.default_rng(seed)
    fitted = f(n)
    preds, gains, plateaus = [], [], []
    for _ in range(boots):
        yb = fitted + rng.normal(0.0, sigma, size=n.shape[0])
        try:
            fb = fit_power_law(n, yb)
        except ValueError:
            continue
        preds.append(fb(nxt))
        gains.append(fb(nxt) - fb(n[-1]))
        plateaus.append(fb.a)
    preds_a, gains_a = np.array(preds), np.array(gains)
    out = {"a": f.a, "b": f.b, "c": f.c, "points": f.points, "sigma": sigma, "residual_sd": resid_sd,
           "level": LEVEL, "n_last": float(n[-1]), "fitted_last": float(fitted[-1]),
           "plateau": f.a, "plateau_interval": _interval(np.array(plateaus)),
           "share_of_plateau_now": float(fitted[-1] / f.a) if f.a > 0 else None,
           "labels_for_95pct_of_plateau": f.labels_for(0.95), "next": []}
    for j, m in enumerate(nxt):
        out["next"].append({"n": float(m), "map50": float(f(m)), "interval": _interval(preds_a[:, j]),
                            "gain": float(f(m) - fitted[-1]), "gain_interval": _interval(gains_a[:, j])})
    return out


def backtest(n: Sequence[float], y: Sequence[float], k: int, boots: int = 200,
             noise_floor: float = NOISE_FLOOR) -> dict[str, Any] | None:
    """Fit on the first k points (in order of n), predict the others: per point the prediction, its
    interval, the actual value and the error (prediction - actual); None when k < MIN_POINTS or
    nothing is left to predict."""
    n = np.asarray(n, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[ok], y[ok]
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    if k < MIN_POINTS or k >= n.shape[0]:
        return None
    fc = forecast(n[:k], y[:k], n[k:], boots=boots, noise_floor=noise_floor)
    rows = [{"n": float(m), "predicted": p["map50"], "interval": p["interval"], "actual": float(a),
             "error": p["map50"] - float(a), "inside": bool(p["interval"][0] <= a <= p["interval"][1])}
            for m, a, p in zip(n[k:], y[k:], fc["next"])]
    errs = np.array([r["error"] for r in rows])
    return {"fit_on": k, "points": rows, "mae": float(np.abs(errs).mean()), "bias": float(errs.mean()),
            "next_error": rows[0]["error"], "coverage": float(np.mean([r["inside"] for r in rows]))}


def forecast_line(history: Sequence[Mapping[str, Any]], unit: str = "images",
                  next_budget: float | None = None) -> str | None:
    """One line for the CLI after a round: what the next budget should buy (None before 3 rounds)."""
    key = "images_labelled" if unit == "images" else "boxes_labelled"
    pts = [(float(r[key]), float(r["map50"])) for r in history
           if r.get("map50") is not None and r.get(key) is not None and r[key] > 0]
    if len({p[0] for p in pts}) < MIN_POINTS:
        return None
    n, y = map(np.array, zip(*pts))
    nxt = None if next_budget is None else [n.max() + next_budget]
    try:
        fc = forecast(n, y, nxt, boots=100)
    except ValueError:
        return None
    p = fc["next"][0]
    lo, hi = p["interval"]
    glo, ghi = p["gain_interval"]
    plo, phi = fc["plateau_interval"]
    n95 = fc["labels_for_95pct_of_plateau"]
    word = "images" if unit == "images" else "boxes"
    if fc["plateau"] >= 0.999:  # held at the bound: the rounds so far show no saturation
        plateau = f"no plateau in sight yet (fit runs to mAP50 1.0; lower end {plo:.3f})"
    else:
        plateau = (f"plateau {fc['plateau']:.3f} [{plo:.3f}, {phi:.3f}], "
                   f"{100 * (fc['share_of_plateau_now'] or 0):.0f}% of it now")
        if math.isfinite(n95) and n95 <= 100 * fc["n_last"]:
            plateau += f", 95% of it at ~{n95:.0f} {word}"
    return (f"forecast: +{p['n'] - fc['n_last']:.0f} {word} (to {p['n']:.0f}) -> mAP50 {p['map50']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], gain {p['gain']:+.3f} [{glo:+.3f}, {ghi:+.3f}]; {plateau} "
            f"({int(LEVEL * 100)}% intervals, power-law fit on {fc['points']} rounds)")
