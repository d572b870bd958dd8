"""What every `minigpt` subcommand shares: the common options, the settings they resolve to, one-line failures."""

from __future__ import annotations

import argparse
import sys

from minigpt_assets.settings import Settings


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--home", default=argparse.SUPPRESS,
                   help="artifact root (default: $MINIGPT_HOME or ./.minigpt)")
    p.add_argument("--recipes", default=argparse.SUPPRESS,
                   help="recipes directory (default: $MINIGPT_RECIPES or ./recipes)")
    p.add_argument("--workers", type=int, default=argparse.SUPPRESS, help="worker processes per stage")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(getattr(args, "home", None), getattr(args, "recipes", None),
                             getattr(args, "workers", None))


def _fail(lines: list[str] | str, code: int = 1) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(line, file=sys.stderr)
    return code
