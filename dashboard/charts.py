"""Plotly figures built from the frames `dashboard.data` returns (pure functions: frame in, figure out)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = px.colors.qualitative.Plotly + px.colors.qualitative.D3
SOURCE_COLORS = {"aleatoric": "#636EFA", "MC-Dropout": "#EF553B", "ensemble spread": "#00CC96", "TTA": "#AB63FA",
                 "total (aleatoric ⊕ epistemic)": "#FFA15A", "oracle (true error)": "#7F7F7F"}


def _layout(fig: go.Figure, height: int = 420, legend: str = "bottom", **kw) -> go.Figure:
    """Common layout; legend 'bottom' (single panels) or 'right' (multi-panel figures, whose x titles it would hide)."""
    leg = dict(orientation="h", yanchor="top", y=-0.2, x=0) if legend == "bottom" else dict(orientation="v", x=1.02)
    top = 70 if kw.get("title") and any(a.text for a in fig.layout.annotations or ()) else 45
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=top, b=10), legend=leg, **kw)
    return fig


def _facets(titles: list[str], max_cols: int = 3, **kw) -> tuple[go.Figure, int, int]:
    """Panels in rows of at most `max_cols`, spaced so that neither the panel titles nor the tick labels at the
    panels' edges run into the neighbouring panel's (five panels in one row read "100%40%")."""
    ncol = min(max_cols, max(1, len(titles)))
    nrow = max(1, -(-len(titles) // ncol))
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=titles or None, horizontal_spacing=0.07,
                        vertical_spacing=0.22 if nrow > 1 else 0.1, **kw)
    return fig, nrow, ncol


def _int_ticks(values) -> dict:
    """x-axis settings for whole numbers (epochs): integer steps, never "1.5" or a "0.1" from a neighbour."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    span = float(v.max() - v.min()) if len(v) else 1.0
    return dict(tickmode="linear", tick0=float(v.min()) if len(v) else 0.0, dtick=max(1, int(np.ceil(span / 10))),
                tickformat="d")


def colors_for(ids, order=None) -> dict[str, str]:
    """model_id -> colour. With `order` (the app-wide names dict, common.context) a model's colour follows its place
    there, so it is the same on every page whatever else a chart shows (issue 21 B2)."""
    pos = {m: k for k, m in enumerate(order or ())}
    extra = [m for m in ids if m not in pos]
    pos.update({m: len(pos) + k for k, m in enumerate(extra)})
    return {m: PALETTE[pos[m] % len(PALETTE)] for m in ids}


def _err(df: pd.DataFrame, col: str) -> dict:
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo not in df or hi not in df:
        return {}
    return dict(error_y=dict(type="data", symmetric=False, array=(df[hi] - df[col]).to_numpy(),
                             arrayminus=(df[col] - df[lo]).to_numpy(), thickness=1.2, width=3))


def pareto_mask(x, y, x_higher: bool = False, y_higher: bool = False) -> np.ndarray:
    """True for the points no other point beats on both axes (at least as good on both, better on one): the Pareto
    front. `*_higher`: larger is better on that axis (throughput, accuracy); else smaller (cost, error)."""
    a = np.asarray(x, float) * (-1 if x_higher else 1)
    b = np.asarray(y, float) * (-1 if y_higher else 1)
    ok = ~(np.isnan(a) | np.isnan(b))
    out = np.zeros(len(a), bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i]))
        out[i] = not dominated.any()
    return out


HIGHER_IS_BETTER = {"infer_img_s", "gender_acc", "cs5", "acc10", "gender_auc", "f1"}


def _short_label(s: str, n: int = 30) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def cost_scatter(lb: pd.DataFrame, x: str, y: str = "mae", labels: dict | None = None) -> go.Figure:
    """Accuracy vs cost: one point per model (with CI bars), x on a log axis, coloured by kind; the Pareto front
    (models no other beats on both axes) joined by a line and labelled with the models' names."""
    d = lb.dropna(subset=[x, y]).copy()
    fig = go.Figure()
    for kind, g in d.groupby("kind", dropna=False, sort=True):
        fig.add_trace(go.Scatter(
            x=g[x], y=g[y], mode="markers", name=str(kind), text=g["label"],
            marker=dict(size=10, line=dict(width=1, color="white")), **_err(g, y),
            hovertemplate="%{text}<br>" + (labels or {}).get(x, x) + "=%{x:.3s}<br>" + (labels or {}).get(y, y)
                          + "=%{y:.3f}<extra></extra>"))
    front = d[pareto_mask(d[x], d[y], x in HIGHER_IS_BETTER, y in HIGHER_IS_BETTER)].sort_values(x)
    log_x = x in ("params", "flops") or (len(d) and d[x].max() / max(d[x].min(), 1e-9) > 30)
    if len(front):
        fig.add_trace(go.Scatter(
            x=front[x], y=front[y], mode="lines+markers", name="Pareto front", customdata=front["label"],
            line=dict(color="gray", dash="dot", width=1),
            marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(width=1.5, color="black")),
            hovertemplate="%{customdata} (Pareto front)<extra></extra>"))
        # Names as arrowed labels: below / above in turn at three staggered heights, so neighbours on the front never
        # print over each other; pointing inwards in the right half, so no name runs off the plot. In a crowd (points
        # within 4 % of the x range and 8 % of the y range of a named one) only the first is named, the most
        # accurate and the cheapest first; the others keep their circle and their name on hover.
        t = (np.log10(front[x].clip(lower=1e-12)) if log_x else front[x].astype(float)).to_numpy()
        u = front[y].astype(float).to_numpy()
        span = float(t.max() - t.min()) or 1.0
        yspan = float(d[y].max() - d[y].min()) or 1.0
        best = int(np.argmax(u) if y in HIGHER_IS_BETTER else np.argmin(u))
        cheap = len(t) - 1 if x in HIGHER_IS_BETTER else 0
        named: list[int] = []
        for i in dict.fromkeys([best, cheap, *range(len(t))]):
            if all(abs(t[i] - t[j]) > 0.04 * span or abs(u[i] - u[j]) > 0.08 * yspan for j in named):
                named.append(i)
        for k, i in enumerate(sorted(named)):
            xv, yv, name, tv = front[x].iloc[i], u[i], front["label"].iloc[i], t[i]
            right = (tv - t.min()) / span > 0.5
            fig.add_annotation(x=np.log10(xv) if log_x else xv, y=yv, text=_short_label(name), hovertext=str(name),
                               name="pareto", showarrow=True, arrowhead=0, arrowwidth=1, arrowcolor="gray",
                               ax=-24 if right else 24, ay=(1 if k % 2 == 0 else -1) * (22 + 16 * ((k // 2) % 3)),
                               xanchor="right" if right else "left", font=dict(size=11))
    if log_x:
        fig.update_xaxes(type="log")
    fig.update_xaxes(title=(labels or {}).get(x, x))
    fig.update_yaxes(title=(labels or {}).get(y, y))
    return _layout(fig, height=480, title="Accuracy vs cost (bars: 95 % CI; circled and named: the Pareto front)")


def slice_bars(df: pd.DataFrame, metric: str, names: dict[str, str], title: str) -> go.Figure:
    """Grouped bars: x = slice value, one bar per model, CI whiskers."""
    fig = go.Figure()
    cmap = colors_for(list(dict.fromkeys(df["model_id"])), names)
    for mid, g in df.groupby("model_id", sort=False):
        fig.add_trace(go.Bar(x=g["slice"], y=g[metric], name=names.get(mid, mid), marker_color=cmap[mid],
                             customdata=g["n"], **_err(g, metric),
                             hovertemplate="%{x}<br>" + metric + "=%{y:.3f}<br>n=%{customdata}<extra></extra>"))
    fig.update_layout(barmode="group", xaxis=dict(type="category"))
    if metric == "bias":
        fig.add_hline(y=0, line_color="gray", line_width=1)
    return _layout(fig, title=title)


def mae_by_age(df: pd.DataFrame, names: dict[str, str], min_n: int = 3) -> go.Figure:
    """MAE (top) and signed bias with CI band (bottom) per true age."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("MAE per true age", "Signed bias (predicted − true), 95 % CI"))
    cmap = colors_for(list(dict.fromkeys(df["model_id"])), names)
    for mid, g in df[df["n"] >= min_n].groupby("model_id", sort=False):
        c, name = cmap[mid], names.get(mid, mid)
        fig.add_trace(go.Scatter(x=g["age"], y=g["mae"], name=name, line=dict(color=c), legendgroup=mid,
                                 customdata=g["n"], hovertemplate="age %{x}: MAE %{y:.2f} (n=%{customdata})"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=np.concatenate([g["age"], g["age"][::-1]]),
                                 y=np.concatenate([g["bias_hi"], g["bias_lo"][::-1]]), fill="toself",
                                 fillcolor=c, opacity=0.15, line=dict(width=0), showlegend=False, legendgroup=mid,
                                 hoverinfo="skip"), row=2, col=1)
        fig.add_trace(go.Scatter(x=g["age"], y=g["bias"], line=dict(color=c), showlegend=False, legendgroup=mid,
                                 hovertemplate="age %{x}: bias %{y:+.2f}"), row=2, col=1)
    fig.add_hline(y=0, line_color="gray", line_width=1, row=2, col=1)
    fig.update_xaxes(title="true age", row=2, col=1)
    return _layout(fig, height=560)


def error_hist(df: pd.DataFrame, names: dict[str, str], width: float = 2.0) -> go.Figure:
    """Normalised histograms of signed error per model, drawn as steps so several models stay readable."""
    fig = go.Figure()
    cmap = colors_for(list(dict.fromkeys(df["model_id"])), names)
    for mid, g in df.groupby("model_id", sort=False):
        g = g.sort_values("err")
        share = g["n"] / g["n"].sum()
        fig.add_trace(go.Scatter(x=g["err"] + width / 2, y=share, name=names.get(mid, mid), mode="lines",
                                 line=dict(color=cmap[mid], shape="hvh", width=2),
                                 hovertemplate="error %{x:+.0f} y: %{y:.1%}<extra>" + names.get(mid, mid)[:30]
                                               + "</extra>"))
    fig.add_vline(x=0, line_color="gray", line_width=1)
    fig.update_xaxes(title="predicted − true age (years; tails clipped at ±40)")
    fig.update_yaxes(title="share of images", tickformat=".0%")
    return _layout(fig, title="Error distribution")


def pred_vs_true(df: pd.DataFrame, name: str) -> go.Figure:
    """scattergl of predicted vs true age, coloured by |error|; customdata = (dataset, image_id) for selection."""
    fig = go.Figure(go.Scattergl(
        x=df["age"], y=df["age_pred"], mode="markers",
        customdata=np.stack([df["dataset"].astype(str), df["image_id"].astype(str)], axis=1) if len(df) else None,
        marker=dict(size=5, color=df["err"].abs(), colorscale="Turbo", cmin=0, cmax=25, opacity=0.7,
                    colorbar=dict(title="|err|")),
        hovertemplate="true %{x:.0f} → predicted %{y:.1f}<br>%{customdata[1]}<extra></extra>"))
    top = float(max(df["age"].max(), df["age_pred"].max(), 1)) if len(df) else 100.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line=dict(color="gray", dash="dash"),
                             hoverinfo="skip", showlegend=False))
    fig.update_xaxes(title="true age")
    fig.update_yaxes(title="predicted age")
    return _layout(fig, height=520, title=f"Predicted vs true — {name} (box/lasso-select points to browse them)",
                   dragmode="lasso")


def group_bars(df: pd.DataFrame, metric: str, names: dict[str, str], title: str) -> go.Figure:
    d = df.rename(columns={"grp": "slice"})
    return slice_bars(d, metric, names, title)


def gaps_bars(gaps: pd.DataFrame, names: dict[str, str], title: str) -> go.Figure:
    d = gaps.copy()
    d["label"] = [names.get(m, m) for m in d["model_id"]]
    panels = [(c, t) for c, t in (("mae_gap", "MAE gap (worst − best group, years)"),
                                  ("eq_odds_diff", "Equalized-odds difference (gender)"))
              if c in d and d[c].notna().any()]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[t for _, t in panels] or None)
    for k, (c, _) in enumerate(panels, start=1):
        extra = {}
        if c == "mae_gap":
            extra = dict(customdata=np.stack([d["worst_group"].astype(str), d["best_group"].astype(str)], axis=1),
                         hovertemplate="%{text}<br>gap %{y:.2f} y (worst %{customdata[0]}, best %{customdata[1]})"
                                       "<extra></extra>")
        else:
            extra = dict(hovertemplate="%{text}<br>EOD %{y:.3f}<extra></extra>")
        # x keyed by model_id (labelled below): two models sharing a name are two bars, never one summed bar
        fig.add_trace(go.Bar(x=d["model_id"], y=d[c], marker_color="#EF553B" if c == "mae_gap" else "#636EFA",
                             name=c, text=d["label"], textposition="none", **extra), row=1, col=k)
        fig.update_xaxes(type="category", tickmode="array", tickvals=list(d["model_id"]),
                         ticktext=list(d["label"]), row=1, col=k)
    fig.update_layout(showlegend=False)
    return _layout(fig, title=title)


def balance_effect(df: pd.DataFrame, strategy_col: str, metric: str, title: str) -> go.Figure:
    fig = px.strip(df, x=strategy_col, y=metric, color="backbone" if "backbone" in df else None,
                   hover_name="label" if "label" in df else None)
    fig.update_traces(marker=dict(size=11))
    return _layout(fig, title=title)


def _ordered_sources(col) -> list[str]:
    order = list(SOURCE_COLORS)
    return sorted(dict.fromkeys(col), key=lambda s: order.index(s) if s in order else len(order))


def _lines_per_model(fig: go.Figure, df: pd.DataFrame, facet: str, panels: list, ncol: int, names: dict[str, str],
                     x: str, y: str, hover: str, mode: str = "lines+markers", error: str | None = None) -> None:
    """In panel k (row-major, `ncol` wide) one line per model through the rows whose `facet` is panels[k]. A model
    keeps its colour and has one legend entry across the panels, so clicking it hides the model in all of them.
    `error`: a column with `_lo`/`_hi` bounds drawn as error bars."""
    cmap = colors_for(list(dict.fromkeys(df["model_id"])), names)
    seen = set()
    for k, panel in enumerate(panels):
        for mid, g in df[df[facet] == panel].groupby("model_id", sort=False):
            fig.add_trace(go.Scatter(x=g[x], y=g[y], mode=mode, name=names.get(mid, mid), line=dict(color=cmap[mid]),
                                     legendgroup=mid, showlegend=mid not in seen, hovertemplate=hover,
                                     **(_err(g, error) if error else {})), row=k // ncol + 1, col=k % ncol + 1)
            seen.add(mid)


def reliability(cov: pd.DataFrame, names: dict[str, str]) -> go.Figure:
    """Observed vs nominal coverage of Gaussian central intervals, one panel per uncertainty source."""
    sources = _ordered_sources(cov["source"])
    fig, nrow, ncol = _facets(sources, shared_yaxes=True)
    for k in range(len(sources)):  # the diagonal first: under the models' lines
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="gray", dash="dash"),
                                 showlegend=False, hoverinfo="skip"), row=k // ncol + 1, col=k % ncol + 1)
    _lines_per_model(fig, cov, "source", sources, ncol, names, "nominal", "observed",
                     hover="nominal %{x:.0%} → observed %{y:.1%}")
    fig.update_xaxes(range=[0.4, 1.0], tickformat=".0%", tickvals=[0.5, 0.6, 0.7, 0.8, 0.9], title="nominal")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title="observed coverage", col=1)
    return _layout(fig, height=330 * nrow + 70, legend="right",
                   title="Coverage of μ ± zσ intervals (on the diagonal = calibrated; below = over-confident)")


def risk_coverage(curves: pd.DataFrame, names: dict[str, str], oracle_for: str | None = None) -> go.Figure:
    """MAE of the retained images vs the fraction retained (most certain first), one panel per source."""
    real = curves[curves["source"] != "oracle (true error)"]
    sources = _ordered_sources(real["source"])
    fig, nrow, ncol = _facets(sources, shared_yaxes=True)
    _lines_per_model(fig, real, "source", sources, ncol, names, "coverage", "mae",
                     hover="keep %{x:.0%} → MAE %{y:.2f}", mode="lines")
    o = curves[(curves["source"] == "oracle (true error)") & (curves["model_id"] == oracle_for)]
    for k in range(len(sources) if len(o) else 0):  # the focus model's oracle, the same in every panel
        fig.add_trace(go.Scatter(x=o["coverage"], y=o["mae"], mode="lines", name="oracle (focus model)",
                                 line=dict(color="gray", dash="dot"), legendgroup="oracle", showlegend=k == 0,
                                 hoverinfo="skip"), row=k // ncol + 1, col=k % ncol + 1)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", tickvals=[0.2, 0.4, 0.6, 0.8], title="coverage (kept)")
    steady = curves[curves["coverage"] >= 0.1]["mae"]
    if len(steady):
        fig.update_yaxes(range=[0, 1.25 * float(steady.max())])
    fig.update_yaxes(title="MAE of kept", col=1)
    return _layout(fig, height=330 * nrow + 70, legend="right",
                   title="Risk–coverage (lower curve = uncertainty ranks errors better)")


def sigma_vs_error(curves: pd.DataFrame, names: dict[str, str], model: str, groups: int = 12) -> go.Figure:
    """For one model: RMSE of the error vs mean σ in equal-count groups of σ (calibrated = on the diagonal)."""
    d = curves[(curves["model_id"] == model) & (curves["source"] != "oracle (true error)")]
    fig = go.Figure()
    top = 1.0
    for src, g in d.groupby("source", sort=False):
        g = g.sort_values("sigma_bin")
        n = g["n"].to_numpy(float)
        grp = np.minimum((np.cumsum(n) - n / 2) / n.sum() * groups, groups - 1).astype(int)
        agg = pd.DataFrame({"grp": grp, "n": n, "ss": g["sigma_bin"].to_numpy() * n, "sse": g["sse"].to_numpy()})
        agg = agg.groupby("grp").sum()
        x, y = agg["ss"] / agg["n"], np.sqrt(agg["sse"] / agg["n"])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=src, line=dict(color=SOURCE_COLORS.get(src)),
                                 customdata=agg["n"], hovertemplate="σ %{x:.2f} → RMSE %{y:.2f} (n=%{customdata})"))
        top = max(top, float(x.max()), float(y.max()))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line=dict(color="gray", dash="dash"),
                             showlegend=False, hoverinfo="skip"))
    fig.update_xaxes(title="predicted σ (group mean)")
    fig.update_yaxes(title="observed RMSE in group")
    return _layout(fig, title=f"σ vs observed error — {names.get(model, model)} ({groups} equal-count groups)")


def gender_reliability(df: pd.DataFrame, names: dict[str, str]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="gray", dash="dash"),
                               showlegend=False, hoverinfo="skip"))
    cmap = colors_for(list(dict.fromkeys(df["model_id"])), names)
    for mid, g in df.groupby("model_id", sort=False):
        fig.add_trace(go.Scatter(x=g["prob"], y=g["observed"], mode="lines+markers", name=names.get(mid, mid),
                                 line=dict(color=cmap[mid]), customdata=g["n"],
                                 hovertemplate="P %{x:.2f} → %{y:.1%} female (n=%{customdata})"))
    fig.update_xaxes(title="predicted P(female)", range=[0, 1])
    fig.update_yaxes(title="observed share female", range=[0, 1])
    return _layout(fig, title="Gender probability reliability")


def robustness(df: pd.DataFrame, names: dict[str, str], metric: str = "mae") -> go.Figure:
    perts = list(dict.fromkeys(df["perturbation"]))
    ncol = min(3, max(1, len(perts)))
    nrow = int(np.ceil(len(perts) / ncol)) or 1
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=perts, shared_yaxes=True,
                        vertical_spacing=0.18 if nrow > 1 else 0.1)
    _lines_per_model(fig, df, "perturbation", perts, ncol, names, "severity", metric,
                     hover="severity %{x} → %{y:.3f}", error=metric if metric == "mae" else None)
    fig.update_xaxes(dtick=1)
    fig.update_xaxes(title="severity (0 = clean)", row=nrow)
    return _layout(fig, height=320 * nrow + 80, legend="right",
                   title=("MAE" if metric == "mae" else "Gender accuracy") + " vs perturbation severity")


def study_chart(df: pd.DataFrame, factor: str, metric: str = "mae", title: str = "", numeric: bool = False,
                group_col: str = "group", order: list | None = None) -> go.Figure:
    """Metric (with CI) per factor value, one line / marker set per controlled group of otherwise-identical runs."""
    fig = go.Figure()
    for k, (grp, g) in enumerate(df.groupby(group_col, sort=False)):
        g = g.sort_values(factor) if numeric else g
        fig.add_trace(go.Scatter(x=g[factor] if numeric else g[factor].astype(str), y=g[metric],
                                 mode="lines+markers" if numeric else "markers", name=str(grp),
                                 marker=dict(size=11, color=PALETTE[k % len(PALETTE)]), text=g["label"],
                                 **_err(g, metric), hovertemplate="%{text}<br>%{x} → %{y:.3f}<extra></extra>"))
    if numeric:
        # Ticks at the studied values only: within one decade plotly's own log ticks read "9 0.1 2 3 … 1".
        vals = sorted(float(v) for v in df[factor].dropna().unique())
        fig.update_xaxes(type="log", title=factor, tickvals=vals, ticktext=[f"{v:g}" for v in vals])
    else:
        seen = [str(v) for v in df[factor].dropna().unique()]
        first = [str(v) for v in (order or []) if str(v) in seen]
        cats = first + sorted(v for v in seen if v not in first)
        fig.update_xaxes(type="category", title=factor, categoryorder="array", categoryarray=cats)
    fig.update_yaxes(title=metric)
    return _layout(fig, height=360, title=title)


def synthetic_fidelity(per_bin: pd.DataFrame, title: str) -> go.Figure:
    """Per age bin: how far a real-trained model's prediction lands from a synthetic face's intended age, beside
    the same model's error on real test faces of that bin (the floor a faithful generator could reach)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=per_bin["age_bin"], y=per_bin["synthetic_mae"], name="synthetic: |predicted − intended|",
                         marker_color="#EF553B", customdata=per_bin[["synthetic_bias", "n"]].to_numpy(),
                         hovertemplate="%{x}: MAE %{y:.1f} y, bias %{customdata[0]:+.1f} y, n=%{customdata[1]}"
                                       "<extra></extra>"))
    fig.add_trace(go.Bar(x=per_bin["age_bin"], y=per_bin["real_test_mae"], name="real test faces: |predicted − true|",
                         marker_color="#636EFA"))
    fig.update_xaxes(title="age bin (intended / true age)")
    fig.update_yaxes(title="age MAE (years)")
    return _layout(fig, barmode="group", title=title)


def heatmap(mat: pd.DataFrame, title: str, fmt: str = ".2f") -> go.Figure:
    fig = go.Figure(go.Heatmap(z=mat.to_numpy(dtype=float), x=[str(c) for c in mat.columns],
                               y=[str(i) for i in mat.index], colorscale="RdYlGn_r", texttemplate="%{z:" + fmt + "}",
                               hovertemplate="trained on %{y}<br>evaluated on %{x}<br>MAE %{z:.2f}<extra></extra>",
                               colorbar=dict(title="MAE")))
    fig.update_xaxes(title="evaluated on", type="category")
    fig.update_yaxes(title="trained on", type="category")
    return _layout(fig, height=120 + 60 * max(1, len(mat)), title=title)


def training_curves(hist: pd.DataFrame) -> go.Figure:
    cols = [c for c in ("train_loss", "val_mae", "val_gender_acc", "lr") if c in hist]
    titles = {"train_loss": "train loss", "val_mae": "val MAE", "val_gender_acc": "val gender acc",
              "lr": "learning rate"}
    fig, _, _ = _facets([titles[c] for c in cols], max_cols=4)
    for k, c in enumerate(cols, start=1):
        fig.add_trace(go.Scatter(x=hist["epoch"], y=hist[c], mode="lines+markers", name=titles[c]), row=1, col=k)
        if c == "val_mae" and hist[c].notna().any():
            best = hist.loc[hist[c].idxmin()]
            fig.add_trace(go.Scatter(x=[best["epoch"]], y=[best[c]], mode="markers", name="best epoch",
                                     marker=dict(size=12, symbol="star", color="gold")), row=1, col=k)
    fig.update_xaxes(title="epoch", **_int_ticks(hist["epoch"]))
    return _layout(fig, height=320, showlegend=False)


def photo_predictions(df: pd.DataFrame, on_face: bool = True) -> go.Figure:
    """Every model's age (± MC-Dropout / aleatoric σ) and P(female) for one face, in one figure; `on_face=False`
    (the whole image, no face found) greys it out and says so in the title, as the numbers look just as sure."""
    d = df.sort_values("age", na_position="last")
    blue, red = ("#636EFA", "#EF553B") if on_face else ("#B0B0B0", "#C8C8C8")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.68, 0.32], horizontal_spacing=0.03,
                        subplot_titles=("Age (bars: ±1σ total; thick: MC-Dropout/ensemble)", "P(female)"))
    y = d["label"].tolist()
    total = d["sigma_total"].to_numpy(float)
    epi = d["sigma_epistemic"].to_numpy(float)
    fig.add_trace(go.Scatter(x=d["age"], y=y, mode="markers", name="age ± total σ",
                             marker=dict(size=11, color=blue),
                             error_x=dict(type="data", array=np.nan_to_num(total), thickness=1.5, width=6),
                             customdata=np.stack([np.nan_to_num(d["sigma_aleatoric"].to_numpy(float), nan=-1),
                                                  np.nan_to_num(epi, nan=-1)], axis=1),
                             hovertemplate="%{y}<br>age %{x:.1f}<br>σ aleatoric %{customdata[0]:.2f}"
                                           "<br>σ MC/ensemble %{customdata[1]:.2f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=d["age"], y=y, mode="markers", name="± MC-Dropout σ", marker=dict(size=1, opacity=0),
                             error_x=dict(type="data", array=np.nan_to_num(epi), thickness=5, width=0,
                                          color=red), hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Bar(x=d["gender_prob"], y=y, orientation="h", name="P(female)", marker_color=red,
                         hovertemplate="%{y}<br>P(female) %{x:.2f}<extra></extra>"), row=1, col=2)
    fig.add_vline(x=0.5, line_dash="dash", line_color="gray", row=1, col=2)
    fig.update_xaxes(title="years", row=1, col=1)
    fig.update_xaxes(range=[0, 1], title="probability", row=1, col=2)
    if not on_face:
        return _layout(fig, height=190 + 42 * len(d), showlegend=False,
                       title="NO FACE FOUND: the models' answers for the whole image, not anyone's age or gender")
    return _layout(fig, height=160 + 42 * len(d), showlegend=False)


def slice_errors(df: pd.DataFrame, overall: float, unit: str, title: str) -> go.Figure:
    """Slices found by dashboard.data.slices.search (ranked, largest effect on top): each slice's error as a
    horizontal bar with its adjusted interval, against the model's overall error (dashed line)."""
    d = df.iloc[::-1]  # plotly draws the first category at the bottom
    pct = unit == "share"
    k = 100.0 if pct else 1.0
    fig = go.Figure(go.Bar(
        x=d["error"] * k, y=d["description"], orientation="h", marker_color="#EF553B", customdata=d["n"],
        error_x=dict(type="data", symmetric=False, array=((d["error_hi"] - d["error"]) * k).to_numpy(),
                     arrayminus=((d["error"] - d["error_lo"]) * k).to_numpy(), thickness=1.2, width=3),
        hovertemplate="%{y}<br>error %{x:.2f}" + (" %" if pct else "") + "<br>n=%{customdata}<extra></extra>"))
    fig.add_vline(x=overall * k, line_dash="dash", line_color="gray",
                  annotation_text=f"overall {overall * k:.2f}" + (" %" if pct else ""), annotation_position="top")
    fig.update_xaxes(title="% misclassified" if pct else "mean absolute error (years)", rangemode="tozero")
    fig.update_yaxes(type="category", automargin=True)
    return _layout(fig, height=140 + 30 * len(d), title=title, showlegend=False)


def attribute_groups(groups: pd.DataFrame, title: str) -> go.Figure:
    """An attribute's accuracy, TPR and FPR per group (dashboard.data.attributes.fairness "groups"), one bar per
    group with its 95 % CI whiskers."""
    metrics = [("accuracy", "accuracy"), ("tpr", "TPR"), ("fpr", "FPR")]
    fig = go.Figure()
    for k, g in enumerate(groups.itertuples(index=False)):
        row = pd.DataFrame({"x": [t for _, t in metrics], "v": [getattr(g, m) for m, _ in metrics],
                            "v_lo": [getattr(g, f"{m}_lo") for m, _ in metrics],
                            "v_hi": [getattr(g, f"{m}_hi") for m, _ in metrics]})
        fig.add_trace(go.Bar(x=row["x"], y=row["v"], name=f"{g.group} (n={g.n})", marker_color=PALETTE[k % 10],
                             **_err(row, "v"), hovertemplate=f"{g.group}<br>%{{x}} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", xaxis=dict(type="category"))
    fig.update_yaxes(range=[0, 1.02], title="rate")
    return _layout(fig, title=title)


def threshold_tradeoff(sweep: pd.DataFrame, current: float, own: float, by: str = "gender") -> go.Figure:
    """Accuracy and the group gaps (accuracy, TPR, FPR) against the decision threshold
    (dashboard.data.attributes.tradeoff); the current threshold drawn as a line, the model's own as a dotted one."""
    fig = go.Figure()
    lines = [("accuracy", "accuracy", "#636EFA", "solid"), ("accuracy_gap", f"accuracy gap ({by})", "#EF553B", "dash"),
             ("tpr_gap", f"TPR gap ({by})", "#00CC96", "dash"), ("fpr_gap", f"FPR gap ({by})", "#AB63FA", "dash")]
    for col, name, color, dash in lines:
        if col in sweep and sweep[col].notna().any():
            fig.add_trace(go.Scatter(x=sweep["threshold"], y=sweep[col], name=name, mode="lines+markers",
                                     line=dict(color=color, dash=dash), marker=dict(size=4),
                                     hovertemplate=f"t=%{{x:.2f}}<br>{name} %{{y:.3f}}<extra></extra>"))
    # Each line's label on the side away from the other line, so two close thresholds never print over each other.
    own_right = own > current
    fig.add_vline(x=current, line_color="black", line_width=2, annotation_text=f"current {current:.2f}",
                  annotation_position="top left" if own_right else "top right")
    if abs(own - current) > 1e-9:
        fig.add_vline(x=own, line_color="gray", line_dash="dot", annotation_text=f"model's {own:.2f}",
                      annotation_position="top right" if own_right else "top left")
    fig.update_xaxes(title="decision threshold (present when p ≥ t)", range=[0, 1])
    fig.update_yaxes(title="accuracy / gap", range=[0, 1.02])
    return _layout(fig, title="Accuracy and fairness gaps vs threshold")


def embedding_map(df: pd.DataFrame, colour: str, label: str, categorical: bool, title: str,
                  highlight: pd.DataFrame | None = None, diverging: bool = False) -> go.Figure:
    """scattergl of an embedding map (x, y), coloured by `colour` (a colour bar, or one legend entry per level when
    `categorical`); customdata = (dataset, image_id) for selection; `highlight` rows (a chosen image and its
    nearest) drawn on top as rings."""
    fig = go.Figure()
    def cd(d: pd.DataFrame):
        return np.stack([d["dataset"].astype(str), d["image_id"].astype(str)], axis=1) if len(d) else None

    hover = ("%{customdata[1]}<br>" + label + ": %{text}<extra></extra>")
    if categorical:
        levels = df[colour].astype("string").fillna("unknown")
        for k, lvl in enumerate(sorted(levels.unique(), key=str)):
            d = df[levels == lvl]
            fig.add_trace(go.Scattergl(x=d["x"], y=d["y"], mode="markers", name=str(lvl), customdata=cd(d),
                                       text=[str(lvl)] * len(d), hovertemplate=hover,
                                       marker=dict(size=5, opacity=0.75, color=PALETTE[k % len(PALETTE)])))
    else:
        v = pd.to_numeric(df[colour], errors="coerce")
        finite = v.dropna()
        lo, hi = (float(finite.quantile(0.02)), float(finite.quantile(0.98))) if len(finite) else (0.0, 1.0)
        if diverging:
            lo, hi = -max(abs(lo), abs(hi), 1e-9), max(abs(lo), abs(hi), 1e-9)
        fig.add_trace(go.Scattergl(
            x=df["x"], y=df["y"], mode="markers", customdata=cd(df), name=label, showlegend=False,
            text=[f"{a:.3g}" if a == a else "—" for a in v], hovertemplate=hover,
            marker=dict(size=5, opacity=0.75, color=v.fillna(lo), colorscale="RdBu_r" if diverging else "Turbo",
                        cmin=lo, cmax=hi if hi > lo else lo + 1, colorbar=dict(title=label[:18]))))
    if highlight is not None and len(highlight):
        fig.add_trace(go.Scattergl(x=highlight["x"], y=highlight["y"], mode="markers", name="chosen + nearest",
                                   customdata=cd(highlight), hovertemplate="%{customdata[1]}<extra></extra>",
                                   marker=dict(size=[16] + [11] * (len(highlight) - 1), color="rgba(0,0,0,0)",
                                               line=dict(width=2, color="black"))))
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, height=600, title=title, dragmode="lasso")
