"""curves.png: drawn on the figure's own Agg canvas, at the documented size, without touching matplotlib's backend."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ctmodel.curves import METRIC_COLUMNS, plot_curves

ROOT = Path(__file__).resolve().parents[2]
FIGSIZE_IN, DPI = (12, 3.6), 100  # what plot_curves draws


def metrics(epochs: int) -> pd.DataFrame:
    """``epochs`` rows of made-up but plausible metrics."""
    return pd.DataFrame({c: [1.0 / (e + 1) for e in range(epochs)] for c in METRIC_COLUMNS}).assign(
        epoch=range(1, epochs + 1))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_curves_png_has_the_figure_size_times_the_dpi(tmp_path):
    out = plot_curves(metrics(3), tmp_path / "curves.png")
    assert png_size(out) == (round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI))
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left


def test_plotting_keeps_the_backend_the_caller_chose_and_never_loads_pyplot(tmp_path):
    out = tmp_path / "c.png"
    script = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from pathlib import Path\n"
        "import pandas as pd\n"
        "from ctmodel.curves import METRIC_COLUMNS, plot_curves\n"
        f"plot_curves(pd.DataFrame({{c: [1.0, 0.5] for c in METRIC_COLUMNS}}), Path({str(out)!r}))\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["svg", "False"]
    assert png_size(out) == (1200, 360)
