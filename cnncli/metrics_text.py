"""cnn eval's text: the metrics evaluate.py computes as aligned lines (summary, per-class table, the
confusion matrix with class names cut to the terminal's columns) and --fail-under's line. It
computes nothing and reads no files.
"""

from __future__ import annotations

import textwrap

from . import textwidth
from .callbacks import loss_text


def short_name(name, width):
    """`name` (data.printable) cut to at most `width` terminal columns (a CJK character takes two),
    marking a cut with '~' at the end."""
    from .data import printable

    return textwidth.fit(printable(str(name)), width)


MATRIX_CLASSES = 40     # format_metrics prints the confusion matrix up to this many classes


def format_metrics(metrics, columns: int | None = None) -> str:
    """Readable aligned text: summary, per-class table, confusion matrix with class names; the tables
    narrowed to `columns` (textwidth.terminal_columns) where they can be."""
    from .data import printable
    from .data.names import told_apart

    lines = []
    for key, title in (("checkpoint", "checkpoint"), ("data", "data")):
        value = metrics.get(key)
        if isinstance(value, list):         # an ensemble's checkpoints
            value = f"mean of {len(value)}: " + ", ".join(value)
        if key in metrics:
            lines.append(f"{title:<16}{value}")
    lines.append(f"{'images':<16}{metrics['num_images']}")
    if "skipped" in metrics:
        lines.append(f"{'skipped':<16}{metrics['skipped']}")
    if metrics.get("absent"):
        lines.append(f"{'no images of':<16}{', '.join(metrics['absent'])} (support 0: recall 0; in macro F1 "
                     "only if predicted)")
    lines.append(f"{'accuracy':<16}{metrics['accuracy']:.4f}")
    lines.append(f"{'top-' + str(metrics['top_k']) + ' accuracy':<16}{metrics['top_k_accuracy']:.4f}")
    lines.append(f"{'loss':<16}{loss_text(metrics['loss'])}")
    lines.append(f"{'macro F1':<16}{metrics['macro_f1']:.4f}")

    names = list(metrics["per_class"])
    label = dict(zip(names, told_apart(names)))      # (one name in two Unicode forms: spelled out)
    widths = [textwidth.width(printable(str(label[n]))) for n in names]   # terminal columns, as printed
    lines += _class_table(metrics["per_class"], names, label, widths, columns)
    confusion = metrics["confusion"]
    if len(names) > MATRIX_CLASSES:                  # (1,000 classes printed 5 MB, lines of 5,000 characters)
        lines += ["", f"confusion matrix: {len(names)} classes, too many to print here (--json holds it; cnn report "
                      "draws it)"]
    elif names:
        lines += _matrix(confusion, names, label, widths, columns)
    return "\n".join(lines)


def _class_table(per_class, names, label, widths, columns) -> list[str]:
    """['', header, a row per class]: precision, recall, F1 and support, names cut at 24 columns (or
    printed whole when two would cut alike); narrower numbers and names when `columns` is less."""
    name_w = min(24, max([5] + widths))
    gap, num, prec = "  ", 9, "precision"
    if columns and name_w + 42 > columns:           # (the full layout: name + 2+9 x3 + 2+7)
        gap, num, prec = " ", 6, "prec."
        name_w = max(5, min(name_w, columns - 29))    # (1+6 x3 + 1+7)
    if len({short_name(label[n], name_w) for n in names}) < len(names):   # (photos_of_category_number_A, _B)
        name_w = max(widths)                         # names that cut alike are printed whole
    rows = ["", f"{'class':<{name_w}}{gap}{prec:>{num}}{gap}{'recall':>{num}}{gap}{'f1':>{num}}{gap}{'support':>7}"]
    for name in names:
        m = per_class[name]
        rows.append(f"{textwidth.ljust(short_name(label[name], name_w), name_w)}{gap}{m['precision']:>{num}.4f}"
                    f"{gap}{m['recall']:>{num}.4f}{gap}{m['f1']:>{num}.4f}{gap}{m['support']:>7d}")
    return rows


def _matrix(confusion, names, label, widths, columns) -> list[str]:
    """['', title, header, a row per true class]: the confusion matrix, columns headed by names cut
    short (numbered when they cut alike); row names (and column heads) cut shorter to fit `columns`."""
    biggest = max(max(row) for row in confusion) if confusion else 0
    name_cap = 8 if len(names) <= 8 else 6  # keep 12 classes within ~100 columns
    col_w = max(len(str(biggest)), min(name_cap, max(widths)), 3)
    corner = "true \\ pred"
    row_w = min(16, max([len(corner)] + widths))
    if columns and row_w + len(names) * (col_w + 1) > columns:
        col_w = max(len(str(biggest)), 3, min(col_w, (columns - 5) // len(names) - 1))
        row_w = max(5, min(row_w, columns - len(names) * (col_w + 1)))
        corner = corner if len(corner) <= row_w else ""   # (the title says what rows and columns are)
    heads = [short_name(label[n], col_w) for n in names]
    numbered = len(set(heads)) < len(heads)      # (class_00_circle, class_01_..: all 'class~'): 1, 2, ...
    if numbered:
        heads = [str(i + 1) for i in range(len(names))]
        col_w = max(col_w, len(heads[-1]))
    rows = [(f"{i + 1} " if numbered else "") + str(label[n]) for i, n in enumerate(names)]
    title = "confusion matrix (rows = true class, columns = predicted class" + (
        ", numbered as the rows)" if numbered else ")")
    lines = [""] + (textwrap.wrap(title, columns) if columns else [title])
    lines.append(f"{corner:<{row_w}}" + "".join(f" {textwidth.rjust(h, col_w)}" for h in heads))
    for name, row in zip(rows, confusion):
        lines.append(textwidth.ljust(short_name(name, row_w), row_w) + "".join(f" {v:>{col_w}d}" for v in row))
    return lines


def below_threshold(metrics, metric, threshold):
    """None when metrics[metric] >= threshold, else the one-line failure message (`cnn eval --fail-under`)."""
    value = float(metrics[metric])
    if value >= threshold:
        return None
    return f"{metric} {value:.4f} is below the threshold {threshold:g} (--fail-under)"
