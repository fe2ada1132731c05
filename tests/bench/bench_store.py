"""Figures for runtime/store.py: batched writes, bulk lookups, flush latency, readers.

Run: .venv/bin/python tests/bench/bench_store.py [--sizes 10000,100000]
Each size uses a fresh database in a temporary directory. Times include the Python
side (buffering: JSON, value hashes) and any background auto-flushes the writer's
janitor made meanwhile, i.e. all the persistence a run would pay.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agentflow.runtime.store import Store


def write_nodes(store: Store, run_id: str, n: int, every: int) -> tuple[float, float]:
    """n nodes, each started + one llm call + finished with a result; flush every
    `every` nodes. Returns (total seconds, seconds spent inside flush())."""
    in_flush = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        node = f"main/items[{i}]/work"
        store.node_started(run_id, node, role="worker", key=f"{run_id}-key-{i:08d}", input_hash=f"in{i}")
        store.record_llm_call(run_id, node, model="scripted", prompt_tokens=120, completion_tokens=40,
                              cost_usd=0.0002, latency_ms=12.5)
        store.node_finished(run_id, node, status="succeeded", value={"index": i, "text": "result " * 8})
        if (i + 1) % every == 0 or i == n - 1:
            f0 = time.perf_counter()
            store.flush()
            in_flush += time.perf_counter() - f0
    return time.perf_counter() - t0, in_flush


def figure(label: str, seconds: float, rows: int | None = None, note: str = "") -> None:
    rate = f"{rows / seconds:>12,.0f} rows/s" if rows else " " * 19
    print(f"{label:<58} {seconds * 1000:>9.1f} ms {rate}  {note}")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    sizes = [int(s) for s in ap.parse_args().sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            db = Path(tmp) / f"bench{n}.duckdb"
            store = Store.open_writer(db)
            for run, every in (("r1", n), ("r2", 256)) + ((("r3", 16),) if n <= 10_000 else ()):
                store.begin_run(run, flow="bench", entry="main", plan_hash="p", inputs={})
                total, flushing = write_nodes(store, run, n, every)
                cadence = "one flush at the end" if every == n else f"flush every {every} nodes"
                figure(f"{n:,} nodes (start+llm call+finish+result), {cadence}", total, n,
                       f"{flushing * 1000:.0f} ms in flush()")
            keys = [f"r1-key-{i:08d}" for i in range(n)]
            t, found = timed(lambda: store.lookup_results(keys))
            figure(f"lookup_results({n:,} keys), writer, values parsed", t, n)
            assert len(found) == n
            t, states = timed(lambda: store.run_progress("r1"))
            figure(f"run_progress, {n:,} nodes", t, n)
            assert len(states) == n
            store.close()
            reader = Store.open_reader(db)
            t, found = timed(lambda: reader.lookup_results(keys))
            figure(f"lookup_results({n:,} keys), reader (attach+query)", t, n)
            t, runs = timed(reader.list_runs)
            figure(f"list_runs over {len(runs) * n:,} node rows, reader", t)
            t, nodes = timed(lambda: reader.run_nodes("r1"))
            figure(f"run_nodes, {n:,} nodes, reader", t, n)
            assert len(nodes) == n
            reader.close()

        db = Path(tmp) / "latency.duckdb"
        store = Store.open_writer(db)
        store.begin_run("r", flow="bench", entry="main", plan_hash="p", inputs={})
        write_nodes(store, "r", 10_000, 10_000)

        def one_node(prefix: str, i: int, split: bool) -> float:
            store.node_started("r", f"{prefix}{i}", role="w", key=f"{prefix}k{i}")
            t0 = time.perf_counter()
            if split:
                store.flush()
            store.node_finished("r", f"{prefix}{i}", status="succeeded", value=i)
            store.flush()
            return time.perf_counter() - t0
        warm = [one_node("a", i, False) for i in range(200)]
        split = [one_node("b", i, True) for i in range(100)]
        cold = []
        for i in range(20):
            time.sleep(0.3)  # idle: the writer has detached (and checkpointed) meanwhile
            cold.append(one_node("c", i, False))
        store.close()
        figure("one node, start+finish in one flush (median)", statistics.median(warm))
        figure("one node, start flush + finish flush (median, both)", statistics.median(split))
        figure("one node flush after an idle detach (median)", statistics.median(cold))
        t, _ = timed(lambda: Store.open_reader(db).list_runs())
        figure("reader: open + list_runs (new process would add ~0.3 s)", t)


if __name__ == "__main__":
    main()
