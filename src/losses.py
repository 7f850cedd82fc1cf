"""The losses of conf/loss, one row each: class, loss per pair, whether it
needs the reference and, for GPO families, f'(0), f''(0), the regularisation
scale f''(0)/|f'(0)| and the link t*(p), computed by the code (gpo.losses.table).

    python src/losses.py                                  # the table (markdown)
    python src/losses.py --write README.md docs/losses.md # rewrite the tables those files hold

Pick a loss with `python src/train.py loss=<config>`; its settings are keys of
its yaml (`loss=cdpo loss.eps=0.2`).
"""

import argparse
import sys
from pathlib import Path

from gpo.losses import table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs="+", metavar="FILE", type=Path,
                        help="replace the loss table between its markers in these files")
    args = parser.parse_args(argv)
    markdown = table.markdown()
    if not args.write:
        print(f"Notation: {table.NOTATION}\n\n{markdown}")
        return 0
    for path in args.write:
        text = path.read_text()
        try:
            updated = table.rewrite(text, markdown)
        except ValueError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 1
        if updated != text:
            path.write_text(updated)
        print(f"{path}: {'rewritten' if updated != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
