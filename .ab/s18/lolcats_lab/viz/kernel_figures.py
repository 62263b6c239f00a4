"""Feature-map views: how well phi(q).phi(k) imitates exp(q.k / sqrt(d)), and how spiky the weights are.

Pure functions returning ``plotly.graph_objects.Figure``; nothing prints or shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..feature_maps import FeatureMap
from ..metrics import spikiness
from ._data import to_numpy
from .figures import colorbar_after

__all__ = ["kernel_vs_exp", "kernel_grid", "weight_histogram"]


def _check_feature_map(fmap, name: str) -> FeatureMap:
    if not isinstance(fmap, FeatureMap):
        raise ValueError(
            f"{name} must be a lolcats_lab FeatureMap (e.g. make_feature_map('hedgehog', H, D)), got {type(fmap).__name__}"
        )
    return fmap


def kernel_grid(
    feature_map: FeatureMap,
    *,
    key_map: FeatureMap | None = None,
    query=None,
    plane=None,
    head: int = 0,
    extent: float = 3.0,
    num_points: int = 41,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The numbers behind :func:`kernel_vs_exp`: one query against a 2-D grid of keys.

    Keys are k(a, b) = a u1 + b u2 for (a, b) in [-extent, extent]^2 (``num_points`` per side), with
    (u1, u2) orthonormal directions in R^D. Both kernels are normalised over the grid, i.e. read as the
    attention row the query would give if the grid points were its keys:
    ``exact = softmax_j(q.k_j / sqrt(D))`` and ``approx = phi_q(q).phi_k(k_j) / sum_j phi_q(q).phi_k(k_j)``.

    Args:
        feature_map: phi for queries (and for keys unless ``key_map`` is given: LoLCATs maps are untied).
        query: [D]; default sqrt(D) * u1, so that the score is s = a along the first axis.
        plane: [2, D] directions (orthonormalised here); default two random orthonormal ones (``seed``).
        head: which head's parameters to use for learnable maps.

    Returns:
        dict with ``a`` [n], ``b`` [n], ``scores`` [n, n], ``exact`` [n, n], ``approx`` [n, n] (rows = b,
        columns = a) and ``kernel`` [n, n], the unnormalised phi_q(q).phi_k(k).
    """
    q_map = _check_feature_map(feature_map, "feature_map")
    k_map = q_map if key_map is None else _check_feature_map(key_map, "key_map")
    if k_map.head_dim != q_map.head_dim or k_map.num_heads != q_map.num_heads:
        raise ValueError("feature_map and key_map must be built for the same num_heads and head_dim")
    H, D = q_map.num_heads, q_map.head_dim
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < H:
        raise ValueError(f"head must be an int in [0, {H}) for this feature map, got {head!r}")
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    if not (isinstance(extent, (int, float)) and extent > 0):
        raise ValueError(f"extent must be a positive number, got {extent!r}")
    if D < 2 and plane is None:
        raise ValueError("head_dim must be >= 2 to span a plane of keys")

    if plane is None:
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(D, 2, generator=gen, dtype=torch.float64))  # [D, 2]
    else:
        p = torch.as_tensor(to_numpy(plane, "plane", ndim=2))
        if p.shape != (2, D):
            raise ValueError(f"plane must be [2, D] = [2, {D}] (two directions), got {tuple(p.shape)}")
        basis, r = torch.linalg.qr(p.T)  # [D, 2]
        basis = basis * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(2, dtype=r.dtype))
        # (QR may flip a column's sign; flip it back so u1, u2 point along the given directions)
    u1, u2 = basis[:, 0], basis[:, 1]  # [D] each
    q = math.sqrt(D) * u1 if query is None else torch.as_tensor(to_numpy(query, "query", ndim=1))
    if q.shape != (D,):
        raise ValueError(f"query must have shape [D] = [{D}], got {tuple(q.shape)}")

    axis = torch.linspace(-extent, extent, num_points, dtype=torch.float64)  # [n]
    bb, aa = torch.meshgrid(axis, axis, indexing="ij")  # [n, n]: rows b, columns a
    keys = aa.reshape(-1, 1) * u1 + bb.reshape(-1, 1) * u2  # [N, D], N = n * n
    scores = keys @ q / math.sqrt(D)  # [N]
    with torch.no_grad():
        fk = k_map(keys.expand(1, H, -1, -1).to(torch.float64))[0, head]  # [N, F]
        fq = q_map(q.expand(1, H, 1, D).to(torch.float64))[0, head, 0]  # [F]
    kernel = fk @ fq  # [N]
    exact = torch.softmax(scores, dim=0)
    total = kernel.sum()
    approx = kernel / total if total > 0 else torch.full_like(kernel, float("nan"))
    shape = (num_points, num_points)
    return {
        "a": axis.numpy(), "b": axis.numpy(), "scores": scores.reshape(shape).numpy(),
        "exact": exact.reshape(shape).numpy(), "approx": approx.reshape(shape).numpy(),
        "kernel": kernel.reshape(shape).numpy(),
    }


def kernel_vs_exp(feature_map: FeatureMap, *, key_map: FeatureMap | None = None, title: str | None = None, **grid_kwargs) -> go.Figure:
    """phi(q).phi(k) against exp(q.k / sqrt(d)) for one query and a 2-D plane of keys.

    Panels: exact softmax row over the key grid | the feature map's normalised kernel | log10(approx / exact)
    | approx vs exact for every grid point (log-log; a perfect map lies on the diagonal). The title gives
    KL(exact || approx) in nats (also ``fig.layout.meta["kl"]``). Keyword arguments go to :func:`kernel_grid`.
    """
    g = kernel_grid(feature_map, key_map=key_map, **grid_kwargs)
    exact, approx = g["exact"], g["approx"]
    positive = approx > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(positive, np.log10(approx / exact), np.nan)
        kl = float(np.sum(exact * (np.log(exact) - np.log(np.where(positive, approx, 1e-300)))))
    name = getattr(feature_map, "name", type(feature_map).__name__)
    fig = make_subplots(rows=1, cols=4, horizontal_spacing=0.1, subplot_titles=[
        "exact: softmax(q.k / sqrt d)", f"{name}: phi(q).phi(k), normalised", "log10(approx / exact)", "approx vs exact"])
    hover = "a %{x:.2f}<br>b %{y:.2f}<br>%{z:.3g}<extra></extra>"
    lo = float(np.log10(max(min(exact.min(), approx[positive].min() if positive.any() else 1.0), 1e-30)))
    hi = float(np.log10(max(exact.max(), approx[positive].max() if positive.any() else 1e-30)))
    for col, z in ((1, exact), (2, approx)):
        fig.add_trace(go.Heatmap(z=np.log10(np.where(z > 0, z, np.nan)), x=g["a"], y=g["b"], coloraxis="coloraxis",
                                 hovertemplate=hover.replace("%{z:.3g}", "log10 w %{z:.3g}")), row=1, col=col)
    lim = float(np.nanmax(np.abs(log_ratio))) if np.isfinite(log_ratio).any() else 1.0
    fig.add_trace(go.Heatmap(z=log_ratio, x=g["a"], y=g["b"], coloraxis="coloraxis2", hovertemplate=hover), row=1, col=3)
    fig.add_trace(go.Scatter(x=exact.ravel(), y=np.where(positive, approx, np.nan).ravel(), mode="markers",
                             marker=dict(size=4, color=g["scores"].ravel(), colorscale="Plasma", opacity=0.6),
                             name="grid keys", hovertemplate="exact %{x:.3g}<br>approx %{y:.3g}<extra></extra>"), row=1, col=4)
    fig.add_trace(go.Scatter(x=[10**lo, 10**hi], y=[10**lo, 10**hi], mode="lines", name="approx = exact",
                             line=dict(color="black", dash="dash")), row=1, col=4)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="a (along u1)", row=1, col=col)
    fig.update_yaxes(title_text="b (along u2)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="exact weight", row=1, col=4)
    fig.update_yaxes(type="log", title_text="approx weight", row=1, col=4)
    n_bad = int((~positive).sum())
    note = f"KL(exact || approx) = {kl:.3g} nats" + (f"; kernel <= 0 at {n_bad} keys (masked)" if n_bad else "")
    fig.update_layout(
        title=dict(text=f"{title or f'{name} kernel vs exp'}<br><sup>{note}</sup>"), showlegend=False,
        coloraxis=dict(colorscale="Viridis", cmin=lo, cmax=hi, colorbar=colorbar_after(fig, 2, "log10 w")),
        coloraxis2=dict(colorscale="RdBu", cmid=0.0, cmin=-max(lim, 1e-12), cmax=max(lim, 1e-12),
                        colorbar=colorbar_after(fig, 3, "log10 ratio")),
        height=420, meta={"kl": kl, "nonpositive": n_bad},
    )
    return fig


def weight_histogram(
    maps: Mapping[str, object],
    *,
    causal: bool = True,
    bins: int = 60,
    floor: float = 1e-8,
    k: int = 4,
    title: str = "Attention weights",
) -> go.Figure:
    """Histogram of log10 attention weights for softmax vs each linearized map (how spiky each is).

    Args:
        maps: ``{label: A [..., T, T]}``; every visible weight counts (the lower triangle with the diagonal
            when ``causal``, all entries otherwise), over all leading dims.
        bins: number of shared log10 bins from log10(floor) to 0; weights below ``floor`` land in the first.
        k: top-k for the top-k mass in the legend.

    Returns:
        Overlaid bars of the fraction of weights per bin (x = bin centre in log10 units). Legend entries give
        mean max weight, top-k mass and effective length (``lolcats_lab.metrics.spikiness``, averaged over
        rows), also in ``fig.layout.meta["spikiness"][label]``.
    """
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError(f"maps must be a non-empty dict {{label: A [..., T, T]}}, got {type(maps).__name__}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    if not (isinstance(floor, (int, float)) and 0 < floor < 1):
        raise ValueError(f"floor must be in (0, 1), got {floor!r}")
    edges = np.linspace(np.log10(floor), 0.0, bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    fig = go.Figure()
    stats = {}
    for label, a in maps.items():
        arr = to_numpy(a, f"maps[{label!r}]")
        if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
            raise ValueError(f"maps[{label!r}] must be [..., T, T], got {tuple(arr.shape)}")
        T = arr.shape[-1]
        visible = np.tril(np.ones((T, T), dtype=bool)) if causal else np.ones((T, T), dtype=bool)
        w = arr[..., visible].ravel()
        w = np.log10(np.clip(w, floor, 1.0))
        counts, _ = np.histogram(w, bins=edges)
        sp = spikiness(torch.from_numpy(arr), k=k)
        stats[str(label)] = {"max_weight": float(sp.max_weight.mean()), "topk_mass": float(sp.topk_mass.mean()),
                             "eff_len": float(sp.eff_len.mean())}
        s = stats[str(label)]
        fig.add_trace(go.Bar(
            x=centers, y=counts / max(1, w.size), width=edges[1] - edges[0], opacity=0.55,
            name=f"{label}: max {s['max_weight']:.2f}, top-{k} {s['topk_mass']:.2f}, eff. len {s['eff_len']:.1f}",
            hovertemplate="log10 w %{x:.2f}<br>fraction %{y:.3f}<extra>" + str(label) + "</extra>",
        ))
    fig.update_layout(
        title=title, barmode="overlay", xaxis_title="log10 attention weight", yaxis_title="fraction of weights",
        legend=dict(orientation="h", y=-0.25), meta={"spikiness": stats, "edges": edges.tolist()},
    )
    return fig
