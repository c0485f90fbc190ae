"""Copy the review page's browser code from node_modules into the package, and check the copy.

    python scripts/vendor_assets.py copy    # node_modules -> services/umbra/services/coordinator/review/static/vendor/
    python scripts/vendor_assets.py check   # fail when the committed copy differs from node_modules

The page serves only its own files (its Content-Security-Policy allows scripts from 'self' alone), and nothing is
downloaded at run time: Chart.js comes from npm (package.json, exact version, package-lock.json), `make tools`
installs it with `npm ci`, and this script copies the built file into the Python package, where it is committed.
After changing the version in package.json: `npm install`, then `copy`, then commit both.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "services/umbra/services/coordinator/review/static/vendor"
# node_modules path -> name in VENDOR
ASSETS = {
    "chart.js/dist/chart.umd.min.js": "chart.umd.min.js",
    "chart.js/LICENSE.md": "chart.js-LICENSE.md",
}


def copy() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    for source, name in ASSETS.items():
        shutil.copyfile(NODE_MODULES / source, VENDOR / name)
        print(f"copied node_modules/{source} -> {(VENDOR / name).relative_to(ROOT)}")
    return 0


def check() -> int:
    problems = []
    for source, name in ASSETS.items():
        if not (NODE_MODULES / source).is_file():
            problems.append(f"node_modules/{source} is missing: run `make tools` (npm ci)")
        elif not (VENDOR / name).is_file():
            problems.append(f"{(VENDOR / name).relative_to(ROOT)} is missing")
        elif not filecmp.cmp(NODE_MODULES / source, VENDOR / name, shallow=False):
            problems.append(f"{(VENDOR / name).relative_to(ROOT)} differs from node_modules/{source}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run `python scripts/vendor_assets.py copy` and commit the copy", file=sys.stderr)
        return 1
    print(f"vendored assets match node_modules ({len(ASSETS)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("copy", "check"))
    return copy() if parser.parse_args().action == "copy" else check()


if __name__ == "__main__":
    sys.exit(main())
