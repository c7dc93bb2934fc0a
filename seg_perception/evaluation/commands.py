"""Evaluation and data subcommands of ``seg-perception`` (being written)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands to the CLI parser."""
