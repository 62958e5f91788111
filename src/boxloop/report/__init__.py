"""Plots and a self-contained HTML report of an active-learning / auto-labelling run.

Input is the results schema that `simulate` writes (OUT/results.json: runs of strategy x seed, each a
list of rounds with images/boxes labelled, cost, mAP50, per-class AP, labelled objects per class,
selection thresholds and pseudo-label counts) and optionally OUT/gallery.json (the last query, boxes
with their provenance). It answers the question of LocAwareAL Figs 6.5-6.8 and FineGrainedAL Figs 3-4: what
did each label buy, and does labelling still pay?

The package, by what each part does:
  keys.py        the results and gallery keys the report reads, spelled once
  sources.py     reading a simulate folder, a results.json, a dict or a project into that schema
  statistics.py  grouping runs, aligning rounds across seeds, the table and the summary (numpy)
  curves.py      area under the curve per seed, paired differences to random, shares of the full-data
                 mAP50, the power-law forecast and its backtest (boxloop.loop.forecast)
  plots.py       the plots (matplotlib, object-oriented API on the Agg canvas: no pyplot, no display)
  html.py        the gallery (Pillow) and the one self-contained page (every image a base64 PNG)
No torch import (a project is read only when one is given) and no network.

Owns: keys, sources, statistics, curves, plots, html. May import: the root modules (outputs: the
report's file is written by the one output rule), store/ and loop.history, loop.config,
loop.forecast (a project's rounds and the forecast).
"""

from __future__ import annotations

from boxloop.report.curves import (
    curve_statistics,
    forecast_summary,
    format_auc_table,
    format_forecast_table,
    format_per_class_table,
    normalised_auc,
    paired,
    per_class_statistics,
)
from boxloop.report.html import PROVENANCE_COLOURS, render_gallery, write_report
from boxloop.report.plots import plot_learning_curves
from boxloop.report.sources import load_results, project_gallery, report_source
from boxloop.report.statistics import format_table, learning_curve_table, rare_ap50, rare_classes, summarize

__all__ = [
    "PROVENANCE_COLOURS",
    "plot_learning_curves",
    "learning_curve_table",
    "format_table",
    "summarize",
    "render_gallery",
    "write_report",
    "load_results",
    "project_gallery",
    "report_source",
    "curve_statistics",
    "forecast_summary",
    "format_auc_table",
    "format_forecast_table",
    "normalised_auc",
    "paired",
    "per_class_statistics",
    "format_per_class_table",
    "rare_classes",
    "rare_ap50",
]
