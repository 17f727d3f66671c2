"""Reports: JSON is the contract, HTML is rendered from it (and, later, DICOM SR/SEG)."""

from .build import build_report, render_html, write_report

__all__ = ["build_report", "render_html", "write_report"]
