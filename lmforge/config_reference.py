"""The README's config reference, written from every stage's config sections.

    python -m lmforge.config_reference --readme README.md   # rewrite the README's block
    python -m lmforge.config_reference                      # print it

Part of the command-line layer, beside `lmforge.cli`: it reads the stage registry, so it
imports every flow, which the floor modules of `lmforge/` (recipes, manifest, lineage) never do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel

from lmforge.recipes import config_reference_markdown, replace_readme_block


def registry_sections() -> dict[str, dict[str, type[BaseModel]]]:
    """Command -> sections of every stage in `lmforge.flows.stages` (imports every flow)."""
    from lmforge.flows.stages import STAGES

    return {stage.command: stage.sections() for stage in STAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmforge.config_reference",
        description="Print or rewrite the config reference.",
    )
    parser.add_argument("--readme", metavar="README", help="rewrite the config reference block")
    args = parser.parse_args(argv)
    reference = config_reference_markdown(registry_sections())
    if args.readme is None:
        print(reference, end="")
        return 0
    path = Path(args.readme)
    text = replace_readme_block(path.read_text(encoding="utf-8"), reference)
    path.write_text(text, encoding="utf-8")
    print(f"rewrote the config reference in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
