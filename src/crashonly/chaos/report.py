"""The HTML report: one self-contained file, charts drawn as inline SVG (no script, no network).

Charts share one time axis: queue depth and throughput with every kill drawn as a vertical mark
(red SIGKILL, amber SIGTERM, blue database restart; hover one for its details — an SVG
``<title>``, no JavaScript), and request latency with failures marked.
"""

from __future__ import annotations

import html
import math
import time
from typing import Any

from .record import Recording, Request, Sample, percentile
from .verify import Verdict, http_split

__all__ = ["render", "throughput"]

W, H, LEFT, RIGHT, TOP, BOTTOM = 920, 210, 56, 16, 12, 28
COLOURS = {"KILL": "#d62728", "TERM": "#ff9f1c", "INT": "#ff9f1c", "db": "#1f77b4"}


def throughput(samples: list[Sample], window: float = 1.0) -> list[tuple[float, float]]:
    """Jobs done per second, over a sliding window of about ``window`` seconds."""
    out = []
    j = 0
    for i, s in enumerate(samples):
        while j < i and s.t - samples[j].t > window:
            j += 1
        if i > j and s.t > samples[j].t:
            out.append((s.t, max(0.0, (s.done - samples[j].done) / (s.t - samples[j].t))))
    return out


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_ceiling(v: float) -> float:
    """The smallest of 1, 2, 4 or 8 times 10^k at or above ``v`` (so quarter ticks are round)."""
    if v <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 4, 8, 10):
        if m * scale >= v * 0.999:
            return m * scale
    return 10 * scale


class _Axes:
    def __init__(self, x_max: float, y_max: float) -> None:
        self.x_max = max(x_max, 1e-9)
        self.y_max = _nice_ceiling(y_max)

    def x(self, t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * t / self.x_max

    def y(self, v: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (1 - min(v, self.y_max) / self.y_max)

    def frame(self, y_label: str) -> list[str]:
        parts = [f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
                 f'height="{H - TOP - BOTTOM}" fill="#fff" stroke="#ccc"/>']
        for i in range(5):
            v = self.y_max * i / 4
            y = self.y(v)
            parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                         'stroke="#eee"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>')
        step = _nice_step(self.x_max)
        t = 0.0
        while t <= self.x_max + 1e-9:
            x = self.x(t)
            parts.append(f'<text x="{x:.1f}" y="{H - 8}" text-anchor="middle">{t:g} s</text>')
            t += step
        parts.append(f'<text x="12" y="{TOP + (H - TOP - BOTTOM) / 2:.0f}" text-anchor="middle" '
                     f'transform="rotate(-90 12 {TOP + (H - TOP - BOTTOM) / 2:.0f})">'
                     f'{_esc(y_label)}</text>')
        return parts


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:g}"


def _nice_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if span / step <= 12:
            return float(step)
    return 1200.0


def _markers(recording: Recording, axes: _Axes) -> list[str]:
    parts = []
    for k in recording.kills:
        x = axes.x(k.t)
        stop = "" if k.stop_seconds is None else f", gone after {k.stop_seconds * 1000:.0f} ms"
        back = "" if k.back is None else f", back in service after {k.back - k.t:.2f} s"
        esc = " — ignored SIGTERM, SIGKILLed" if k.escalated else ""
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" '
                     f'stroke="{COLOURS.get(k.signal, "#999")}" stroke-width="1.5" opacity="0.55">'
                     f'<title>{k.t:.2f} s: SIG{k.signal} {_esc(k.name)} (pid {k.pid}){stop}{back}'
                     f'{_esc(esc)}</title></line>')
    for d in recording.db_restarts:
        x = axes.x(d.t)
        parts.append(f'<rect x="{x:.1f}" y="{TOP}" width="{max(2.0, axes.x(d.t + d.seconds) - x):.1f}"'
                     f' height="{H - TOP - BOTTOM}" fill="{COLOURS["db"]}" opacity="0.25">'
                     f'<title>{d.t:.2f} s: database restart ({d.seconds:.2f} s, exit '
                     f'{d.returncode})</title></rect>')
    return parts


def _svg(parts: list[str]) -> str:
    return (f'<svg viewBox="0 0 {W} {H}" width="100%" xmlns="http://www.w3.org/2000/svg" '
            f'font-size="11" font-family="sans-serif">' + "".join(parts) + "</svg>")


def _polyline(points: list[tuple[float, float]], axes: _Axes, colour: str, label: str) -> str:
    if not points:
        return ""
    coords = " ".join(f"{axes.x(t):.1f},{axes.y(v):.1f}" for t, v in points)
    return (f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8">'
            f'<title>{_esc(label)}</title></polyline>')


def _line_chart(recording: Recording, x_max: float, series: list[tuple[str, str, list[tuple[float, float]]]],
                y_label: str) -> str:
    y_max = max([v for _, _, pts in series for _, v in pts] + [1.0]) * 1.05
    axes = _Axes(x_max, y_max)
    parts = axes.frame(y_label)
    if recording.load_end is not None:
        x = axes.x(recording.load_end)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#555" '
                     'stroke-dasharray="4 3"><title>faults stop; drain begins</title></line>')
    parts += _markers(recording, axes)
    parts += [_polyline(pts, axes, colour, label) for label, colour, pts in series]
    legend_x = LEFT + 8
    for label, colour, _ in series:
        parts.append(f'<rect x="{legend_x}" y="{TOP + 6}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{TOP + 15}">{_esc(label)}</text>')
        legend_x += 20 + 7 * len(label)
    return _svg(parts)


def _latency_chart(recording: Recording, x_max: float, requests: list[Request],
                   http_type: str) -> str:
    ok = [(r.start, (r.end - r.start) * 1000) for r in requests if not r.failed]
    expected, unexpected = http_split(requests, recording.kills, http_type)
    y_max = (percentile([ms for _, ms in ok], 0.999) or 10.0) * 1.05
    axes = _Axes(x_max, y_max)
    parts = axes.frame("latency (ms)")
    parts += _markers(recording, axes)
    for t, ms in ok:
        parts.append(f'<circle cx="{axes.x(t):.1f}" cy="{axes.y(ms):.1f}" r="1.6" fill="#2a7"/>')
    for r, colour, what in ([(r, "#999", "cut by SIGKILL (expected)") for r in expected]
                            + [(r, "#d62728", "FAILED") for r in unexpected]):
        x, y = axes.x(r.start), axes.y(min((r.end - r.start) * 1000, y_max))
        parts.append(f'<path d="M{x - 4:.1f},{y - 4:.1f} l8,8 m0,-8 l-8,8" stroke="{colour}" '
                     f'stroke-width="2"><title>{r.start:.2f} s: {_esc(what)}: '
                     f'{_esc(r.error or f"HTTP {r.status}")}</title></path>')
    return _svg(parts)


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def render(*, recording: Recording, verdict: Verdict, title: str, settings: dict[str, Any],
           timing: dict[str, Any], totals: list[tuple[str, str]], http_type: str | None,
           log_tail: list[str]) -> str:
    x_max = recording.end or recording.now()
    samples = list(recording.samples)
    depth = [(s.t, float(s.waiting)) for s in samples]
    running = [(s.t, float(s.reserved)) for s in samples]
    ok = verdict.ok
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;padding:0 1em}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;"
        "border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}",
        ".ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}.verdict{font-size:1.4em;"
        "padding:.6em 1em;border-radius:6px}.pass{background:#e6f4ea}.fail{background:#fdecea}",
        "small,.muted{color:#666}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}",
        ".legend span{display:inline-block;width:12px;height:3px;margin:0 .3em 0 1em;vertical-align:middle}",
        "</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='muted'>{_esc(time.strftime('%Y-%m-%d %H:%M:%S'))} · "
        + " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in settings.items()) + "</p>",
        f"<div class='verdict {'pass' if ok else 'fail'}'>"
        + ("Every invariant held: nothing was lost." if ok else
           "Invariants violated: see below what was lost or broken.") + "</div>",
        "<h2>Invariants</h2><table><tr><th></th><th>check</th><th>result</th></tr>",
    ]
    for c in verdict.checks:
        details = "".join(f"<br><small>{_esc(d)}</small>" for d in c.details)
        out.append(f"<tr><td class='{'ok' if c.ok else 'bad'}'>{'✔' if c.ok else '✘'}</td>"
                   f"<td>{_esc(c.name)}</td><td>{_esc(c.summary)}{details}</td></tr>")
    out.append("</table><h2>Totals</h2><table>")
    out += [f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in totals]
    out.append("</table>")
    out.append("<h2>Queue</h2><p class='legend muted'>vertical marks:<span style='background:"
               f"{COLOURS['KILL']}'></span>SIGKILL<span style='background:{COLOURS['TERM']}'>"
               f"</span>SIGTERM<span style='background:{COLOURS['db']}'></span>database restart"
               "<span style='background:#555'></span>faults stop (dashed); hover a mark for "
               "details</p>")
    out.append(_line_chart(recording, x_max, [("waiting", "#6a51a3", depth),
                                              ("running", "#2ca02c", running)], "jobs"))
    out.append("<h2>Throughput</h2>")
    out.append(_line_chart(recording, x_max, [("jobs done per second", "#1f77b4",
                                               throughput(samples))], "jobs/s"))
    if http_type is not None and recording.requests:
        lat = [(r.end - r.start) for r in recording.requests if not r.failed]
        out.append(f"<h2>HTTP latency</h2><p class='muted'>{len(recording.requests)} requests; "
                   f"p50 {_fmt_s(percentile(lat, 0.5))}, p99 {_fmt_s(percentile(lat, 0.99))}, "
                   "max " + _fmt_s(max(lat) if lat else None) + "; grey ✕: cut by a SIGKILL "
                   "(expected), red ✕: failed</p>")
        out.append(_latency_chart(recording, x_max, recording.requests, http_type))
    out.append("<h2>Start-up and shutdown</h2><table><tr><th>type</th><th>start-up p50 / p99"
               "</th><th>shutdown after SIGTERM p50 / p99</th><th>back in service after a kill "
               "p50 / p99</th></tr>")
    for name, metrics in timing.items():
        cells = []
        for metric in ("startup", "shutdown", "back"):
            m = metrics.get(metric) or {"n": 0}
            cells.append("-" if not m["n"] else
                         f"{_fmt_s(m['p50'])} / {_fmt_s(m['p99'])} <small>(n={m['n']})</small>")
        out.append(f"<tr><td>{_esc(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table><h2>Faults</h2><table><tr><th>at</th><th>process</th><th>signal</th>"
               "<th>gone after</th><th>back in service after</th></tr>")
    for k in recording.kills:
        back = "-" if k.back is None else f"{k.back - k.t:.2f} s"
        sig = f"SIG{k.signal}" + (" → ignored, SIGKILL" if k.escalated else "")
        out.append(f"<tr><td>{k.t:.2f} s</td><td>{_esc(k.name)} <small>pid {k.pid}</small></td>"
                   f"<td class='{'bad' if k.escalated else ''}'>{_esc(sig)}</td>"
                   f"<td>{_fmt_s(k.stop_seconds)}</td><td>{back}</td></tr>")
    for d in recording.db_restarts:
        out.append(f"<tr><td>{d.t:.2f} s</td><td>database</td><td>restart command</td>"
                   f"<td>{d.seconds:.2f} s (exit {d.returncode})</td><td></td></tr>")
    out.append("</table>")
    if log_tail:
        out.append("<h2>Last lines of crashonly up</h2><pre>"
                   + _esc("\n".join(log_tail)) + "</pre>")
    out.append("</body></html>\n")
    return "\n".join(out)
