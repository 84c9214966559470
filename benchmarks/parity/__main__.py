"""Regenerate every parity fixture in one command (each script's own docstring says what it compares):

    python -m benchmarks.parity --yolact ~/src/yolact --centermask ~/src/centermask2 --istr ~/src/istr_v1

Checkouts: dbolya/yolact (HEAD), youngwanLEE/centermask2 (HEAD), hujiecpp/ISTR at 02279fc (V1). An architecture
whose checkout is not given is skipped. Each script prints its report (max differences, losses, assignments).
"""
from __future__ import annotations

import argparse

from benchmarks.parity import centermask, istr, yolact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yolact", help="dbolya/yolact checkout")
    parser.add_argument("--centermask", help="youngwanLEE/centermask2 checkout")
    parser.add_argument("--istr", help="hujiecpp/ISTR checkout at 02279fc")
    args = parser.parse_args(argv)
    if not (args.yolact or args.centermask or args.istr):
        parser.error("give at least one of --yolact, --centermask, --istr")
    for script, repo in ((yolact, args.yolact), (centermask, args.centermask), (istr, args.istr)):
        if repo:
            script.main(["--official-repo", repo])


if __name__ == "__main__":
    main()
