"""Whole-process compile times for generated programs of 1k, 10k and 100k bindings,
and the start-up cost of `agentflow --help` and of compiling a small spec. The compiler is
measured with the plan cache off; a last line gives the time of an unchanged spec read back
from a plan cache of the benchmark's own.

    python tests/bench/bench_compile.py [--sizes 1000,10000,100000]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gen import BENCH_ENV, BENCH_TOOLS, wide_program  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


NO_CACHE = {**BENCH_ENV, "AGENTFLOW_PLAN_CACHE": "0"}


def timed(args: list[str], repeat: int = 3, env: dict[str, str] = NO_CACHE) -> float:
    """Best-of-n wall time of a whole `agentflow` process, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "agentflow", *args], capture_output=True, text=True,
                              env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0,):
            raise SystemExit(f"agentflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    print(f"agentflow --help: {timed(['--help'], 5):.3f} s")
    print(f"compile specs/build_project.agentflow: {timed(['compile', str(ROOT / 'specs/build_project.agentflow')], 5):.3f} s")
    per_binding = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "benchtools.py").write_text(BENCH_TOOLS)
        for n in (int(s) for s in args.sizes.split(",")):
            spec = Path(tmp) / f"wide_{n}.agentflow"
            spec.write_text(wide_program(n))
            seconds = timed(["compile", str(spec)], 1 if n >= 100_000 else 3)
            per_binding.append(seconds / n)
            print(f"compile {n:>7} bindings: {seconds:7.3f} s  ({seconds / n * 1e6:6.1f} us/binding)")
            cached = {**BENCH_ENV, "AGENTFLOW_CACHE_DIR": str(Path(tmp) / "cache")}
            timed(["compile", str(spec)], 1, cached)  # fills the cache
            print(f"        {n:>7} bindings, unchanged (plan cache): {timed(['compile', str(spec)], 3, cached):7.3f} s")
    if len(per_binding) > 1:
        print(f"growth: us/binding from smallest to largest x{per_binding[-1] / per_binding[0]:.2f} "
              f"(1.0 = linear; start-up dominates small sizes)")


if __name__ == "__main__":
    main()
