"""DICOMweb: fetch a study, store the results back, watch for new studies (issue 8; being built)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread pacs ...`` (analyze, watch) on the top-level command line."""
