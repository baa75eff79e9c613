"""Run every benchmark in turn; `--quick` runs each one small enough for CI's smoke test.

    python benchmarks/run_all.py --quick [--out DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Benchmarks that take --device; checkpoint_cost writes to the host's disk, feature_cache runs its extractor on
# the CPU by design, and sweep_overhead runs the demo sweep as `make demo` does (CPU workers).
SCRIPTS = {"ssd.py": True, "train_throughput.py": True, "latency.py": True, "fold_gpu.py": True,
           "loader_throughput.py": True, "checkpoint_cost.py": False, "feature_cache.py": False,
           "sweep_overhead.py": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    failed = []
    for script, takes_device in SCRIPTS.items():
        cmd = [sys.executable, str(HERE / script), "--out", str(args.out)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--device", args.device] if takes_device else []
        start = time.perf_counter()
        print(f"== {script}", flush=True)
        if subprocess.run(cmd, env=env).returncode != 0:
            failed.append(script)
        print(f"== {script}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
