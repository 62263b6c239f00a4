"""Figures carry the right data: values equal to independent numpy/metrics computations, shared colour
ranges, NaN in the causal mask, and clear errors for bad input. Exact comparisons (float64 throughout,
plotly stores what we hand it) unless a tolerance is stated."""

from __future__ import annotations

import math
import os

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.offline import get_plotlyjs

from lolcats_lab.attention import naive_hybrid_attn, naive_linear_attn, softmax_attn
from lolcats_lab.feature_maps import make_feature_map
from lolcats_lab.metrics import attention_entropy, mse, spikiness
from lolcats_lab.viz import (
    attention_maps,
    entropy_comparison,
    error_maps,
    head_metric_grid,
    map_statistics,
    kernel_grid,
    kernel_vs_exp,
    layer_mse_bars,
    mse_curves,
    training_curves,
    weight_histogram,
    write_report,
)


def z(trace) -> np.ndarray:
    return np.asarray(trace.z, dtype=np.float64)


def masked_upper(a: np.ndarray) -> np.ndarray:
    """Independent causal masking: NaN where key index > query index."""
    i, j = np.indices(a.shape)
    return np.where(j > i, np.nan, a)


@pytest.fixture(scope="module")
def maps():
    """Real maps of one head: softmax, elu-linear and hybrid-tk attention on random q, k, v (T = 10)."""
    torch.manual_seed(42)
    q, k, v = torch.randn(3, 1, 2, 10, 8, dtype=torch.float64).unbind(0)
    _, a_soft = softmax_attn(q, k, v, return_map=True)
    phi = make_feature_map("elu", 2, 8)
    fq, fk = phi(q), phi(k)
    _, a_lin = naive_linear_attn(fq, fk, v, return_map=True)
    _, a_hyb = naive_hybrid_attn(q, k, v, fq, fk, torch.zeros(2), window=3, kind="tk", return_map=True)
    return {"softmax": a_soft[0], "linear": a_lin[0], "hybrid": a_hyb[0]}  # each [H, T, T]


# ------------------------------------------------------------------------------------------------ maps
def test_attention_maps_panels_values_mask_and_shared_scale(maps):
    m = {name: a[0] for name, a in maps.items()}  # head 0, [T, T]
    tokens = [f"tok{i}" for i in range(10)]
    fig = attention_maps(m, tokens)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["softmax", "linear", "hybrid", "|softmax - hybrid|"]
    for trace, name in zip(fig.data[:3], m):
        np.testing.assert_array_equal(z(trace), masked_upper(m[name].numpy()))
        assert trace.coloraxis == "coloraxis"
    np.testing.assert_array_equal(z(fig.data[3]), masked_upper(np.abs(m["softmax"].numpy() - m["hybrid"].numpy())))
    assert fig.data[3].coloraxis == "coloraxis2"
    # one colour range for all maps: [0, max over every map]
    assert fig.layout.coloraxis.cmin == 0.0
    assert fig.layout.coloraxis.cmax == pytest.approx(max(float(a.max()) for a in m.values()), abs=0)
    assert fig.layout.coloraxis2.cmax == pytest.approx(float((m["softmax"] - m["hybrid"]).abs().max()), abs=0)
    assert list(fig.layout.xaxis.ticktext) == tokens and list(fig.layout.yaxis.ticktext) == tokens
    assert "query" in fig.data[0].hovertemplate and "key" in fig.data[0].hovertemplate
    assert fig.layout.meta["block"] == 1


def test_attention_maps_causal_false_keeps_upper_triangle(maps):
    """Negative control for the mask test above: without causal masking no NaN appears."""
    m = {"softmax": maps["softmax"][1], "linear": maps["linear"][1]}
    fig = attention_maps(m, causal=False, difference=None)
    assert len(fig.data) == 2
    assert not np.isnan(z(fig.data[0])).any()
    np.testing.assert_array_equal(z(fig.data[1]), m["linear"].numpy())


def test_attention_maps_difference_pair_and_log_scale(maps):
    m = {name: a[0] for name, a in maps.items()}
    fig = attention_maps(m, log_scale=True, floor=1e-4, difference=("linear", "softmax"))
    assert fig.data[-1].name == "|linear - softmax|"
    expected = np.log10(np.maximum(masked_upper(m["linear"].numpy()), 1e-4))
    np.testing.assert_allclose(z(fig.data[1]), expected, rtol=0, atol=0)
    assert fig.layout.coloraxis.cmin == pytest.approx(-4.0)
    assert fig.layout.coloraxis.cmax <= 0.0  # weights <= 1


def test_attention_maps_downsamples_long_sequences_with_a_note():
    torch.manual_seed(0)
    T, max_tokens = 10, 4  # f = ceil(10 / 4) = 3 -> 4 x 4 blocks, the last one partial
    a = torch.softmax(torch.randn(T, T, dtype=torch.float64).masked_fill(torch.ones(T, T).triu(1).bool(), -math.inf), -1)
    fig = attention_maps({"softmax": a, "copy": a.clone()}, max_tokens=max_tokens)
    got = z(fig.data[0])
    assert got.shape == (4, 4)
    ref = masked_upper(a.numpy())
    for bi in range(4):
        for bj in range(4):
            block = ref[3 * bi : 3 * bi + 3, 3 * bj : 3 * bj + 3]
            vals = block[np.isfinite(block)]
            if vals.size == 0:
                assert np.isnan(got[bi, bj])
            else:
                assert got[bi, bj] == pytest.approx(vals.mean(), rel=1e-12)
    assert "block-averaged 3x3" in fig.layout.title.text and fig.layout.meta["block"] == 3
    assert list(fig.layout.xaxis.ticktext) == ["0-2", "3-5", "6-8", "9-9"]
    np.testing.assert_array_equal(z(fig.data[2]), np.where(np.isnan(got), np.nan, 0.0))  # identical maps: |diff| = 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(maps={}), r"^maps must be a non-empty dict"),
        (dict(maps={"a": torch.ones(2, 3, 3)}), r"maps\['a'\] must have 2 dims"),
        (dict(maps={"a": torch.ones(3, 4)}), r"must be a square map \[T, T\]"),
        (dict(maps={"a": torch.ones(3, 3), "b": torch.ones(4, 4)}), r"^all maps must have the same shape"),
        (dict(maps={"a": torch.ones(3, 3)}, tokens=["x"]), r"^tokens has 1 entries but the maps have T=3"),
        (dict(maps={"a": torch.ones(3, 3)}, max_tokens=0), r"^max_tokens must be a positive int"),
        (dict(maps={"a": torch.ones(3, 3), "b": torch.ones(3, 3)}, difference=("a", "c")), r"^difference must be None"),
        (dict(maps={"a": torch.ones(3, 3)}, log_scale=True, floor=0), r"^floor must be a positive number"),
    ],
    ids=["empty", "3d", "non-square", "shapes", "tokens", "max-tokens", "difference", "floor"],
)
def test_attention_maps_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_maps(**kwargs)


def test_error_maps_per_head_values_and_mse(maps):
    a, b = maps["softmax"], maps["linear"]  # [H, T, T]
    fig = error_maps(a, b)
    assert len(fig.data) == a.shape[0]
    for h, trace in enumerate(fig.data):
        np.testing.assert_array_equal(z(trace), masked_upper(np.abs(a[h].numpy() - b[h].numpy())))
        assert trace.coloraxis == "coloraxis"
        assert fig.layout.meta["mse"][h] == pytest.approx(float(mse(a[h], b[h])), rel=1e-12)
    with pytest.raises(ValueError, match=r"^maps_a and maps_b must both be \[H, T, T\]"):
        error_maps(a, b[:, :5, :5])


# ------------------------------------------------------------------------------------------------ grids
def test_map_statistics_equal_the_metrics(maps):
    stacked = torch.stack([maps["softmax"], maps["linear"]])  # [L=2, H=2, T, T]
    stats = map_statistics(stacked)
    p = stacked.double()
    naive_entropy = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1).mean(-1)  # [L, H]
    torch.testing.assert_close(stats["entropy"].double(), naive_entropy, rtol=1e-5, atol=1e-6)  # fp32 result
    sp = spikiness(stacked)
    torch.testing.assert_close(stats["max_weight"], sp.max_weight.float().mean(-1))
    torch.testing.assert_close(stats["eff_len"], sp.eff_len.float().mean(-1))
    as_list = map_statistics([maps["softmax"][None], maps["linear"][None]])  # [B=1, H, T, T] per layer
    torch.testing.assert_close(as_list["entropy"], stats["entropy"])
    with pytest.raises(ValueError, match=r"^maps must be \[L, H, T, T\]"):
        map_statistics(torch.ones(2, 3, 4))


def test_head_metric_grid_values_hover_and_highlight():
    values = np.array([[0.5, 2.0, 0.1], [3.0, 0.2, 1.0]])  # [L=2, H=3]
    fig = head_metric_grid(values, "entropy", metric="entropy", highlight_below=0.6)
    np.testing.assert_array_equal(z(fig.data[0]), values)
    assert all(s in fig.data[0].hovertemplate for s in ("layer", "head", "entropy"))
    marks = fig.data[1]
    assert sorted(zip(marks.y, marks.x)) == [(0, 0), (0, 2), (1, 1)]
    assert len(head_metric_grid(values).data) == 1  # no threshold, no marks
    with pytest.raises(ValueError, match=r"^highlight_below must be a number"):
        head_metric_grid(values, highlight_below="low")


def test_entropy_comparison_shares_the_scale_and_highlights_teacher_heads():
    teacher = torch.tensor([[0.1, 1.5], [2.0, 0.3]])
    student = torch.tensor([[0.9, 1.6], [2.2, 1.1]])
    fig = entropy_comparison(teacher, student, highlight_below=0.5)
    heat = [t for t in fig.data if t.type == "heatmap"]
    np.testing.assert_array_equal(z(heat[0]), teacher.double().numpy())
    np.testing.assert_array_equal(z(heat[1]), student.double().numpy())
    np.testing.assert_allclose(z(heat[2]), (student - teacher).double().numpy(), atol=1e-7)
    assert heat[0].coloraxis == heat[1].coloraxis == "coloraxis" and heat[2].coloraxis == "coloraxis2"
    assert fig.layout.coloraxis.cmin == pytest.approx(0.1) and fig.layout.coloraxis.cmax == pytest.approx(2.2)
    assert fig.layout.coloraxis2.cmid == 0.0
    marks = [t for t in fig.data if t.type == "scatter"]
    assert len(marks) == 3 and all(sorted(zip(m.y, m.x)) == [(0, 0), (1, 1)] for m in marks)
    with pytest.raises(ValueError, match=r"^teacher and student must have the same \[L, H\] shape"):
        entropy_comparison(teacher, student[:1])


# ------------------------------------------------------------------------------------------------ conversion error
def test_layer_mse_bars():
    before, after = torch.tensor([[1.0, 3.0], [4.0, 4.0]]), torch.tensor([0.5, 0.25])  # [L, H] averaged; [L]
    fig = layer_mse_bars(before, after)
    np.testing.assert_array_equal(np.asarray(fig.data[0].y), [2.0, 4.0])
    np.testing.assert_array_equal(np.asarray(fig.data[1].y), [0.5, 0.25])
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.meta["reduction"] == pytest.approx(3.0 / 0.375)
    with pytest.raises(ValueError, match=r"^before and after must have the same number of layers"):
        layer_mse_bars([1.0, 2.0], [1.0])


def test_mse_curves_from_array_and_dict():
    hist = np.array([[1.0, 2.0], [0.5, 1.0], [0.25, 0.5]])  # [S=3, L=2]
    fig = mse_curves(hist, steps=[10, 20, 30])
    assert [t.name for t in fig.data] == ["layer 0", "layer 1", "mean over layers"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].y), hist[:, 1])
    np.testing.assert_array_equal(np.asarray(fig.data[2].y), hist.mean(1))
    np.testing.assert_array_equal(np.asarray(fig.data[0].x), [10, 20, 30])
    fig = mse_curves({0: [(0, 1.0), (5, 0.5)], 3: [(0, 2.0), (5, 1.5), (9, 1.0)]})
    assert [t.name for t in fig.data] == ["layer 0", "layer 3"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].x), [0, 5, 9])
    with pytest.raises(ValueError, match=r"^steps has 2 entries but history has 3 rows"):
        mse_curves(hist, steps=[1, 2])
    with pytest.raises(ValueError, match=r"list of \(step, mse\) pairs"):
        mse_curves({0: [(0, 1.0, 2.0)]})


def test_training_curves_has_the_loss_panel():
    fig = training_curves(np.array([[1.0, 2.0], [0.5, 1.0]]), [3.0, 2.0], steps=[10, 20])
    loss = [t for t in fig.data if t.name == "loss"][0]
    np.testing.assert_array_equal(np.asarray(loss.y), [3.0, 2.0])
    np.testing.assert_array_equal(np.asarray(loss.x), [10, 20])
    assert loss.xaxis == "x2"
    layerwise = training_curves({0: [(0, 1.0), (1, 0.5)], 1: [(0, 2.0)]}, [1.0, 0.7, 2.0])
    assert [t.name for t in layerwise.data] == ["layer 0", "layer 1", "loss"]
    np.testing.assert_array_equal(np.asarray(layerwise.data[2].x), [0, 1, 2])
    with pytest.raises(ValueError, match=r"^loss has 2 entries but its steps have 3"):
        training_curves(None, [1.0, 2.0], loss_steps=[0, 1, 2])


# ------------------------------------------------------------------------------------------------ feature maps
def test_kernel_grid_exact_matches_softmax_and_taylor_matches_its_polynomial():
    D = 6
    g = kernel_grid(make_feature_map("taylor", 1, D), num_points=9, extent=2.0, seed=3)
    s = g["scores"]
    exact = np.exp(s) / np.exp(s).sum()
    np.testing.assert_allclose(g["exact"], exact, rtol=1e-12)
    poly = 1 + s + s**2 / 2  # Taylor: phi(q).phi(k) = 1 + s + s^2 / 2 (independent of the feature layout)
    np.testing.assert_allclose(g["approx"], poly / poly.sum(), rtol=1e-10)
    # default query sqrt(D) * u1 makes the score the first grid coordinate: s = a
    np.testing.assert_allclose(s, np.broadcast_to(g["a"][None, :], s.shape), atol=1e-12)


def test_kernel_grid_untied_maps_explicit_plane_and_query():
    torch.manual_seed(1)
    H, D, n = 2, 4, 5
    q_map = make_feature_map("hedgehog", H, D, feature_dim=3, init="random").double()
    k_map = make_feature_map("hedgehog", H, D, feature_dim=3, init="random").double()
    e = torch.eye(D, dtype=torch.float64)
    query = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64)
    g = kernel_grid(q_map, key_map=k_map, query=query, plane=e[:2], head=1, num_points=n, extent=1.5)
    axis = torch.linspace(-1.5, 1.5, n, dtype=torch.float64)
    keys = torch.stack([axis[j] * e[0] + axis[i] * e[1] for i in range(n) for j in range(n)])  # rows b, columns a
    fk = k_map(keys[None, None].expand(1, H, -1, -1))[0, 1]  # [N, F]
    fq = q_map(query[None, None, None].expand(1, H, 1, -1))[0, 1, 0]  # [F]
    np.testing.assert_allclose(g["kernel"].ravel(), (fk @ fq).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(g["scores"].ravel(), (keys @ query / 2.0).numpy(), rtol=1e-12)  # sqrt(D) = 2
    flipped = kernel_grid(q_map, key_map=k_map, query=query, plane=-3.0 * e[:2], head=1, num_points=n, extent=1.5)
    np.testing.assert_allclose(flipped["scores"], -g["scores"], rtol=1e-12)  # directions kept, not re-signed by QR
    tied = kernel_grid(q_map, query=query, plane=e[:2], head=1, num_points=n, extent=1.5)
    assert not np.allclose(tied["kernel"], g["kernel"])  # negative control: key_map is really used
    with pytest.raises(ValueError, match=r"^plane must be \[2, D\] = \[2, 4\]"):
        kernel_grid(q_map, plane=e[:3])


def test_kernel_vs_exp_reports_kl_and_nonpositive_keys():
    torch.manual_seed(0)
    hh = make_feature_map("hedgehog", 2, 8, feature_dim=8, init="random")
    fig = kernel_vs_exp(hh, head=1, num_points=11)
    g = kernel_grid(hh, head=1, num_points=11)
    kl = float(np.sum(g["exact"] * np.log(g["exact"] / g["approx"])))
    assert fig.layout.meta["kl"] == pytest.approx(kl, rel=1e-9)
    np.testing.assert_allclose(z(fig.data[2]), np.log10(g["approx"] / g["exact"]), rtol=1e-12)
    relu = kernel_vs_exp(make_feature_map("relu", 1, 8), num_points=11)
    assert relu.layout.meta["nonpositive"] > 0 and "kernel <= 0" in relu.layout.title.text
    with pytest.raises(ValueError, match=r"^head must be an int in \[0, 2\)"):
        kernel_grid(hh, head=2)
    with pytest.raises(ValueError, match=r"^feature_map must be a lolcats_lab FeatureMap"):
        kernel_vs_exp(torch.nn.Identity())


def test_weight_histogram_counts_and_spikiness(maps):
    fig = weight_histogram({"softmax": maps["softmax"], "linear": maps["linear"]}, bins=20, floor=1e-6)
    edges = np.asarray(fig.layout.meta["edges"])
    T = maps["softmax"].shape[-1]
    for trace, name in zip(fig.data, ("softmax", "linear")):
        a = maps[name].numpy()
        w = a[..., np.tril(np.ones((T, T), dtype=bool))].ravel()  # visible weights, both heads
        counts, _ = np.histogram(np.log10(np.clip(w, 1e-6, 1.0)), bins=edges)
        np.testing.assert_allclose(np.asarray(trace.y), counts / w.size, rtol=1e-12)
        sp = spikiness(maps[name])
        assert fig.layout.meta["spikiness"][name]["max_weight"] == pytest.approx(float(sp.max_weight.mean()))
        assert fig.layout.meta["spikiness"][name]["eff_len"] == pytest.approx(float(sp.eff_len.mean()))
    # softmax on random scores is spikier than elu-linear attention: the figure must tell them apart
    assert fig.layout.meta["spikiness"]["softmax"]["max_weight"] > fig.layout.meta["spikiness"]["linear"]["max_weight"]
    with pytest.raises(ValueError, match=r"must be \[\.\.\., T, T\]"):
        weight_histogram({"a": torch.ones(3, 4)})


# ------------------------------------------------------------------------------------------------ report
def test_write_report_is_one_self_contained_file(tmp_path, maps):
    figs = [("maps <softmax>", attention_maps({k: v[0] for k, v in maps.items()})), ("grid", head_metric_grid(np.eye(2)))]
    path = write_report(figs, tmp_path / "sub" / "report.html", title="Test & report")
    text = path.read_text()
    assert text.count(get_plotlyjs()[:500]) == 1  # plotly.js embedded exactly once
    assert text.count("Plotly.newPlot") == 2 and "<script src=" not in text  # two figures, no external script
    assert 'id="plot-0"' in text and 'id="plot-1"' in text
    assert "maps &lt;softmax&gt;" in text and "Test &amp; report" in text
    assert os.listdir(path.parent) == ["report.html"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"^figures\[0\] must be a \(title: str, figure: go.Figure\) pair"):
        write_report([figs[0][1]], tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"^path must be a file path"):
        write_report(figs, tmp_path)
