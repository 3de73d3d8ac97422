"""HTML of the training view and the cluster page: pure functions of the data (runs.py), with
inline SVG charts, so the page needs no JavaScript bundle, no CDN and no new service."""
from __future__ import annotations

import html
import time

from slimeflow.utils.logparse import format_eta

STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1d2733;background:#fff}
h1{font-size:20px} h2{font-size:16px;margin:18px 0 6px}
.run{border:1px solid #d5dde6;border-radius:6px;padding:10px 14px;margin:0 0 14px}
.bar{background:#e8eef5;border-radius:4px;height:14px;width:600px}
.bar>div{background:#3b82c4;height:14px;border-radius:4px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #d5dde6;padding:3px 7px}
.state-failed{color:#b42318} .state-running{color:#1d6fb8} .state-success{color:#18794e}
.muted{color:#6b7785} .charts{display:flex;gap:18px;flex-wrap:wrap} code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def series(points: dict, key: str) -> list:
    """[(rollout, value)] of `key` over every attempt's rollout points, later attempts winning
    (a resumed attempt re-runs no rollout, but a re-sent poll may repeat one)."""
    by = {}
    for attempt_points in points.values():
        for p in attempt_points:
            v = p.get(key)
            if p.get("kind") == "rollout" and isinstance(v, (int, float)):
                by[p["rollout"]] = float(v)
    return sorted(by.items())


def eval_series(points: dict) -> dict:
    """{metric: [(rollout, value)]} of the eval points."""
    out = {}
    for attempt_points in points.values():
        for p in attempt_points:
            if p.get("kind") == "eval":
                for k, v in (p.get("metrics") or {}).items():
                    if isinstance(v, (int, float)) and "truncated" not in k:
                        out.setdefault(k, {})[p["rollout"]] = float(v)
    return {k: sorted(v.items()) for k, v in out.items()}


def svg_chart(title: str, data: list, evals: dict | None = None, w=560, h=170) -> str:
    """A line chart of [(x, y)] with the evals as dots; axes labelled with min and max."""
    pad_l, pad_b, pad_t = 48, 22, 18
    allpts = list(data) + [pt for s in (evals or {}).values() for pt in s]
    if not allpts:
        return (f'<svg class="chart" width="{w}" height="{h}" role="img" aria-label="{_e(title)}">'
                f'<text x="10" y="20">{_e(title)}: no points yet</text></svg>')
    xs, ys = [p[0] for p in allpts], [p[1] for p in allpts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9

    def px(x, y):
        return (pad_l + (x - x0) / (x1 - x0) * (w - pad_l - 8),
                pad_t + (1 - (y - y0) / (y1 - y0)) * (h - pad_t - pad_b))
    line = " ".join("%.1f,%.1f" % px(x, y) for x, y in data)
    parts = [f'<svg class="chart" width="{w}" height="{h}" role="img" aria-label="{_e(title)}">',
             f'<text x="{pad_l}" y="12" font-size="12">{_e(title)}</text>',
             f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 8}" y2="{h - pad_b}" stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" stroke="#999"/>',
             f'<text x="2" y="{pad_t + 8}" font-size="10">{y1:.3g}</text>',
             f'<text x="2" y="{h - pad_b}" font-size="10">{y0:.3g}</text>',
             f'<text x="{pad_l}" y="{h - 6}" font-size="10">{x0:g}</text>',
             f'<text x="{w - 40}" y="{h - 6}" font-size="10">{x1:g}</text>']
    if len(data) > 1:
        parts.append(f'<polyline class="series" fill="none" stroke="#3b82c4" stroke-width="1.5" '
                     f'points="{line}"/>')
    elif data:
        cx, cy = px(*data[0])
        parts.append(f'<circle class="series" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="#3b82c4"/>')
    for i, (name, pts) in enumerate(sorted((evals or {}).items())):
        colour = ("#d9822b", "#18794e", "#8e44ad")[i % 3]
        for x, y in pts:
            cx, cy = px(x, y)
            parts.append(f'<circle class="eval" cx="{cx:.1f}" cy="{cy:.1f}" r="3" '
                         f'fill="{colour}"><title>{_e(name)} {y:.4g} at rollout {x}</title>'
                         f'</circle>')
    parts.append("</svg>")
    return "".join(parts)


def run_block(v: dict) -> str:
    prog = v.get("progress") or {}
    total, done = prog.get("total") or v.get("total"), prog.get("rollout")
    pct = 100.0 * done / total if total and done is not None else 0.0
    state = v.get("state") or "?"
    out = [f'<div class="run" data-run="{_e(v["run_id"])}">',
           f'<h2>{_e(v["dag_id"])} · <code>{_e(v["run_id"])}</code> · '
           f'<span class="state-{_e(state)}">{_e(state)}</span></h2>',
           f'<div class="muted">head {_e(v.get("head"))} · checkpoints in '
           f'<code>{_e(v.get("save_dir"))}</code></div>']
    if v.get("error"):
        out.append(f'<p class="muted">cannot read the run on its head: {_e(v["error"])}</p>')
    out.append(f'<p class="progress">rollout {_e(done if done is not None else "-")}/{_e(total)}'
               f' ({pct:.1f}%) · reward {_e(_num(prog.get("reward")))} · loss '
               f'{_e(_num(prog.get("loss")))} · ETA {_e(format_eta(prog.get("eta_s")))}'
               f' · attempt <code>{_e(prog.get("attempt") or "-")}</code> · job '
               f'{_e(prog.get("status") or "-")}</p>'
               f'<div class="bar"><div style="width:{min(pct, 100):.1f}%"></div></div>')
    cause = prog.get("cause")
    if isinstance(cause, dict) and cause.get("cause"):
        out.append(f'<p class="state-failed">cause: {_e(cause["cause"])} — '
                   f'{_e(cause.get("line"))}</p>')
    pts = v.get("points") or {}
    out.append('<div class="charts">' +
               svg_chart("reward per rollout (dots: evals)", series(pts, "reward"),
                         eval_series(pts)) +
               svg_chart("loss per rollout", series(pts, "loss")) + "</div>")
    out.append(gpu_table(prog.get("gpu") or {}))
    attempts = (v.get("record") or {}).get("attempts") or []
    if attempts:
        out.append("<table class='attempts'><tr><th>attempt</th><th>start iteration</th>"
                   "<th>submitted</th><th>outcome</th><th>at</th></tr>")
        for a in attempts:
            out.append(f"<tr><td><code>{_e(a.get('id'))}</code></td>"
                       f"<td>{_e(a.get('start_iteration'))}</td><td>{_e(a.get('submitted'))}"
                       f"</td><td>{_e(a.get('final') or 'running or unknown')}</td>"
                       f"<td>{_e(_when(a.get('at')))}</td></tr>")
        out.append("</table>")
    ck = v.get("checkpoint") or {}
    out.append(f'<p>latest checkpoint: rollout {_e(ck.get("iteration"))} '
               f'<code>{_e(ck.get("path") or "-")}</code></p></div>')
    return "".join(out)


def gpu_table(gpu: dict) -> str:
    """Per node: the latest GPU sample the trigger took (utils/gpuwatch.py), and what it saw."""
    summary = gpu.get("summary") or {}
    if not summary:
        return '<p class="muted">GPUs: no sample yet (the trigger samples every few polls)</p>'
    rows = []
    for node, s in sorted(summary.items()):
        if s.get("error"):
            rows.append(f"<tr><td>{_e(node)}</td><td colspan='6' class='state-failed'>"
                        f"{_e(s['error'])}</td></tr>")
            continue
        health = []
        if s.get("hang"):
            health.append("NCCL-hang signature (busy on idle power)")
        if s.get("new_ecc"):
            health.append(f"{s['new_ecc']} new ECC error(s)")
        if s.get("new_xid"):
            health.append(f"{s['new_xid']} new Xid(s)")
        if s.get("xid_readable") is False:
            health.append("Xid unknown (kernel log unreadable)")
        gib = (s.get("mem_used_mib") or 0) / 1024, (s.get("mem_total_mib") or 0) / 1024
        cls = "state-failed" if health and not health[-1].startswith("Xid unknown") else ""
        rows.append(f"<tr><td>{_e(node)}</td><td>{_e(s.get('gpus'))}</td>"
                    f"<td>{_e(s.get('util'))}% (min {_e(s.get('util_min'))}%)</td>"
                    f"<td>{_e(_num(s.get('power_w')))} / {_e(_num(s.get('power_limit_w')))} W</td>"
                    f"<td>{gib[0]:.1f} / {gib[1]:.0f} GiB</td>"
                    f"<td class='{cls}'>{_e('; '.join(health) or 'healthy')}</td>"
                    f"<td>{_e(_when(s.get('t')))}</td></tr>")
    return ("<table class='gpus'><tr><th>node</th><th>GPUs</th><th>utilization</th>"
            "<th>power (avg / limit)</th><th>memory</th><th>health</th><th>sampled</th></tr>"
            + "".join(rows) + "</table>")


def training_page(views: list, refresh_s: int = 15) -> str:
    body = "".join(run_block(v) for v in views) or "<p>No runs of slimeflow DAGs yet.</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='refresh' content='{refresh_s}'><title>slimeflow training</title>"
            f"<style>{STYLE}</style></head><body><h1>slimeflow training</h1>"
            f"<p class='muted'>running and recent runs; updates every {refresh_s} s · "
            f"<a href='cluster'>cluster</a></p>{body}</body></html>")


def cluster_page(nodes: list) -> str:
    rows = "".join(
        f"<tr><td>{_e(n['conn_id'])}</td><td>{_e(n.get('host'))}</td>"
        f"<td>{_e(n.get('gpus'))}</td><td>{_e(n.get('probed'))}</td>"
        f"<td>{_e(n.get('lease_run') or 'free')}</td><td>{_e(n.get('lease_age'))}</td>"
        f"<td>{_e(n.get('error') or '')}</td></tr>" for n in nodes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>slimeflow cluster</title>"
            f"<style>{STYLE}</style></head><body><h1>slimeflow cluster</h1>"
            f"<p class='muted'><a href='training'>training</a></p><table class='nodes'>"
            f"<tr><th>node</th><th>host</th><th>GPUs (last probe)</th><th>last probe</th>"
            f"<th>lease held by</th><th>heartbeat age</th><th>problem</th></tr>{rows}</table>"
            f"</body></html>")


def _num(x):
    return f"{x:.4g}" if isinstance(x, (int, float)) else (x if x is not None else "?")


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC" if t else "-"
