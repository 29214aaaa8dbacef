"""What every citytwin HTML report shares: the style sheet, figures inlined as PNG data URIs, numbers
formatted as a person reads them, and the facts table of a header.

The run report (`html.py`) and the live-drive report (`twin/drive/report.py`) both build on these, so the
two read alike and neither pulls in the other's dependencies.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from citytwin.twin.report.figures import DPI

CSS = """
body { font-family: "DejaVu Sans", "Noto Sans", "Segoe UI", Arial, sans-serif; color: #222;
       margin: 0; background: #f4f4f2; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 1.5rem 1.5rem 3rem; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 2px solid #e6550d; padding-bottom: .2rem; }
.sub { color: #555; margin: 0 0 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
th { background: #f7f7f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { background: none; color: #555; font-weight: normal; width: 13rem; }
figure { margin: .5rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption, .note { color: #555; font-size: .88rem; }
footer { margin-top: 2.5rem; border-top: 1px solid #ccc; padding-top: .8rem; }
"""


def png_data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG data URI; the figure is cleared afterwards."""
    FigureCanvasAgg(fig)  # Agg whatever backend the caller's session chose
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()  # drop the artists now rather than when the collector gets round to it
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(fig: Figure, alt: str, caption: str = "") -> str:
    """A <figure> with the figure inlined and an optional caption."""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(fig)}" alt="{escape(alt)}">{caption_html}</figure>'


def format_value(value: Any) -> str:
    """A KPI value as a person reads it: thousands separated, decimals that matter, "—" when absent."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "—"
        if v.is_integer():
            return f"{int(v):,}"
        size = abs(v)
        return f"{v:,.0f}" if size >= 100 else f"{v:.1f}" if size >= 10 else f"{v:.2f}" if size >= 1 else f"{v:.3g}"
    return str(value)


def facts_table(rows: list[tuple[str, str]]) -> str:
    """A two-column table of (label, HTML already escaped) rows, as a report's header shows its facts."""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts">{cells}</table>'
