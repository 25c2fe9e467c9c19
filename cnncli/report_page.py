"""The report page of `cnn report`: what the run is (cnn info's lines, a divergence, the test), the
evaluation's tables, the pictures embedded, the config. Text only: report.py draws the pictures and
evaluates; nothing here reads images or runs the network.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from .callbacks import loss_text
from .errors import CnnError


def _table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _json_for_script(obj) -> str:
    """JSON that cannot end a <script> element early (<, >, & escaped as \\u00XX)."""
    text = json.dumps(obj, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow-x:auto}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0 2em}figcaption{color:#555;font-size:0.9em}"""


def render_html(title, metrics, classes, history, config_text, pictures, errors_rows, run_text="") -> str:
    """The whole report page; every piece of text is escaped, pictures are embedded as data URIs.
    run_text: what the run is (run_text()), shown first."""
    e = html.escape
    evaluated = "confusion" in metrics            # (else only the checkpoint and a note on the data)
    summary = [("checkpoint", metrics.get("checkpoint", "")), ("data", metrics.get("data", ""))] + [
        ("images", metrics["num_images"]),
        ("skipped files", metrics.get("skipped", 0)),
    ] + ([("no images of", ", ".join(metrics["absent"]))] if metrics.get("absent") else []) + [
        ("accuracy", f"{metrics['accuracy']:.4f}"),
        (f"top-{metrics['top_k']} accuracy", f"{metrics['top_k_accuracy']:.4f}"),
        ("loss (summed BCE)", loss_text(metrics["loss"])),
        ("macro F1", f"{metrics['macro_f1']:.4f}"),
    ] if evaluated else []
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style></head><body>',
        f"<h1>{e(title)}</h1>",
    ]
    if run_text:
        parts += ["<h2>Run</h2>", f"<pre>{e(run_text)}</pre>"]
    parts += ["<h2>Evaluation</h2>", _table(("metric", "value"), summary) if evaluated else
              f"<p>{e(metrics.get('data', ''))}</p>"]
    if history:
        last = history[-1]
        cols = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")
        shown = [(k, "" if math.isnan(last.get(k, math.nan)) else f"{last[k]:.6g}") for k in cols if k in last]
        parts += ["<h3>Last row of metrics.csv</h3>", _table(("column", "value"), shown)]
    if evaluated:
        per_class = [(c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"])
                     for c, m in metrics["per_class"].items()]
        parts += ["<h2>Per-class metrics</h2>", _table(("class", "precision", "recall", "f1", "support"), per_class)]
        parts += [
            "<h2>Confusion matrix</h2><p>Rows are true classes, columns predicted classes.</p>",
            _table(("true \\ predicted", *classes), [(c, *row) for c, row in zip(classes, metrics["confusion"])]),
        ]
    for name, caption, png in pictures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><a href="{e(name)}"><img src="data:image/png;base64,{data}" alt="{e(caption)}"></a>'
            f"<figcaption>{e(caption)} (<a href=\"{e(name)}\">{e(name)}</a>)</figcaption></figure>"
        )
    if errors_rows:
        parts += ["<h3>Most confidently wrong images</h3>",
                  _table(("file", "true class", "predicted class", "probability"), errors_rows)]
    parts += ["<h2>Configuration (config.yaml)</h2>", f"<pre>{e(config_text or '(no config.yaml)')}</pre>"]
    machine = dict(metrics)
    machine["classes"] = list(classes)
    parts.append(f'<script type="application/json" id="metrics">{_json_for_script(machine)}</script>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def run_text(run_dir: Path, ckpt: Path) -> str:
    """What `cnn info` says of the run above its layer table (how far it trained, which epoch's weights
    the checkpoint holds, early stopping, the recipe, the test), then what diverged.txt says; "" for a
    checkpoint cnn info cannot describe."""
    from .runfolder import read_diverged
    from .summary import describe, format_info

    last = run_dir / "last.npz"
    run_last = last if ckpt.name == "best.npz" and last.is_file() and ckpt.parent == run_dir else None
    try:
        lines = format_info(describe(ckpt, run_last)).split("\n\n")[0].splitlines()
    except CnnError:
        lines = []
    diverged = read_diverged(run_dir)
    if diverged:
        lines.append(f"diverged    {diverged}")
    return "\n".join(lines)
