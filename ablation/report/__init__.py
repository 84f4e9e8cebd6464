"""Study reports: ``build_report(study, out_dir)`` writes ``<out_dir>/<study>.html``, ``.csv`` and ``.md``.

aggregate: runs -> tidy table -> per-variant statistics (and `collect`, which reads MLflow);
figures: the Plotly figures; markdown: the summary as a Markdown table; page: the HTML page, `write_report` and `build_report`.
"""
from ablation.report.page import build_report, render, write_report

__all__ = ["build_report", "render", "write_report"]
