"""Segmentation bundles: lesion masks, their regions and Dice/HD95 against the experts (issue 5; being built)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``secondread segment`` on the top-level command line."""
