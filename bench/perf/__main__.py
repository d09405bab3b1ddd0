"""`python -m bench.perf AREA [args]`: run one area's benchmark (each area is `bench.perf.<area>`)."""
import importlib
import pkgutil
import sys

import bench.perf as perf


def main() -> int:
    areas = sorted(m.name for m in pkgutil.iter_modules(perf.__path__) if not m.name.startswith("_"))
    if len(sys.argv) < 2 or sys.argv[1] not in areas:
        print(f"usage: python -m bench.perf {{{','.join(areas)}}} [args]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.perf.{sys.argv[1]}")
    return int(module.main(sys.argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
