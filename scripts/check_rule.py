#!/usr/bin/env python
"""Check a rule file someone sent you, without running anything from it.

    python scripts/check_rule.py rule.pt2 [more files ...]

Reads each file as data (``evoplast.export.load_rule``: never ``torch.export.load``, never a pickle) and,
for a ``.pt2``, also runs the archive checker (``evoplast.safe_pt2.check_pt2``) that torch-only users run
before ``torch.export.load``. Prints one line per file; exit 0 if every file is a usable rule, 2 if any is
refused (the line says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, parser, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser("Check received rule files (.pt2 or .safetensors) without running code from them.",
               "check_rule.py", config=False, tracking=False)
    p.add_argument("files", nargs="+", metavar="FILE", help="rule files to check")
    args = p.parse_args(argv)

    from evoplast.export import RuleExportError, load_rule
    from evoplast.safe_pt2 import UnsafePt2, check_pt2

    refused = []
    for name in args.files:
        try:
            step, manifest = load_rule(name)
            if Path(name).suffix == ".pt2":
                check_pt2(name)
        except (RuleExportError, UnsafePt2) as exc:
            refused.append(f"{name}: {exc}" if isinstance(exc, UnsafePt2) else str(exc))
            continue
        print(f"{name}: a {manifest['rule']} rule on layers {manifest['plastic_layers']} of {manifest['sizes']} "
              f"({manifest['kind']}); load it with evoplast.export.load_rule")
    if refused:
        raise UsageError("; ".join(refused) if len(refused) == 1 else
                         f"{len(refused)} of {len(args.files)} files refused: " + "; ".join(refused))
    return 0


if __name__ == "__main__":
    run_main(main)
