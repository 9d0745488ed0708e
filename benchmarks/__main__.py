"""Run every benchmark module's ``main()``; name some to run only those (``pricing tokens``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = {a.removeprefix("bench_") for a in argv}
    failed = 0
    for name in names:
        if wanted and name.removeprefix("bench_") not in wanted:
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            result = module.main()
        except Exception as exc:  # keep going: one broken benchmark must not hide the others
            print(f"{name} failed: {exc!r}")
            failed += 1
            continue
        if result not in (None, 0):
            failed += 1
        print(f"({name}: {time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
