"""Print the parameter count of every model x block x fusion at the default width, as docs/model.md's table.

Run: python scripts/param_counts.py [--width 12]
"""
from __future__ import annotations

import argparse

from ctmodel.variants import command, parameter_rows


def main() -> None:
    """Print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=12)
    rows = parameter_rows(parser.parse_args().width)
    print("| command | parameters |\n| --- | --- |")
    for cfg, count in rows:
        print(f"| `{command(cfg)}` | {count:,} |")


if __name__ == "__main__":
    main()
