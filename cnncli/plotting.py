"""matplotlib for cnncli's pictures (cnn report, lr-find's plot, augment-preview's font): its config
folder, its lazy import with the Agg canvas, the shared style and figures. Not the drawing of any
picture (report.py, lrfind.py), and no pyplot or display.
"""

from __future__ import annotations

import os
import sys
import tempfile

from .errors import CnnError

MATPLOTLIB_MISSING = "the plots need matplotlib: pip install 'cnncli[plots]'"
DPI = 120
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI, "savefig.dpi": DPI}


def matplotlib_config_folder() -> None:
    """MPLCONFIGDIR set to a temporary folder when matplotlib's own (~/.config/matplotlib) cannot be
    written (a read-only home), before matplotlib is imported: it would print two warnings about it."""
    if "MPLCONFIGDIR" in os.environ or "matplotlib" in sys.modules:
        return
    home = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config"),
                        "matplotlib")
    try:
        os.makedirs(home, exist_ok=True)
        if os.access(home, os.W_OK):
            with tempfile.TemporaryFile(dir=home):
                return
    except OSError:
        pass
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="cnncli-matplotlib-")


def matplotlib_parts():
    """(matplotlib module, Figure, FigureCanvasAgg), or CnnError when matplotlib is not installed."""
    matplotlib_config_folder()
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise CnnError(MATPLOTLIB_MISSING) from err
    return matplotlib, Figure, FigureCanvasAgg


def new_figure(Figure, Canvas, width, height):
    """A Figure of width x height inches at DPI, constrained layout, drawn on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    Canvas(fig)
    return fig
