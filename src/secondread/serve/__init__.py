"""The service (FastAPI) and its web viewer (issue 8; being built)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread serve`` on the top-level command line."""
