"""epfiot completion bash|zsh: a shell completion script generated from the parser itself (shtab), so it
never lags behind the commands and options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PATH_OPTIONS = {"files", "state_dir", "policy"}  # complete as file names


def mark_paths(parser: argparse.ArgumentParser) -> None:
    """Options that take a path complete file names (shtab's FILE), in every subcommand."""
    import shtab

    for action in parser._actions:
        if action.dest in PATH_OPTIONS or action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                mark_paths(sub)


def run(args: argparse.Namespace) -> int:
    import shtab

    from epfiot.cli.parser import build_parser

    parser = build_parser()
    mark_paths(parser)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0
