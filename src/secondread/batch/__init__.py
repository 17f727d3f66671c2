"""Batch analysis of whole archives: exactly once, resumable, on a local pool or on Ray.

The one entry point for the command line is :func:`run_batch` (then :func:`format_summary`).
See :mod:`secondread.batch.journal` for why a killed batch loses and duplicates nothing.
"""

from .discover import Study
from .runner import Summary, format_summary, run_batch

__all__ = ["run_batch", "format_summary", "Summary", "Study"]
