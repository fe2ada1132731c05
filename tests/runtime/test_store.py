"""runtime/store.py against real DuckDB files, and real processes for locking and kills."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from agentflow.compiler.hashing import value_hash
from agentflow.runtime.store import (PUBLIC_VIEWS, SCHEMA_VERSION, Store, StoreError, StoreLocked,
                                     StoreSchemaError)
from polling import wait_until

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agentflow.duckdb"


def child(tmp_path: Path, name: str, body: str, *args: str, **kw) -> subprocess.Popen:
    """Start `python <name>.py args` running `body` (the writer's lock names this command)."""
    script = tmp_path / f"{name}.py"
    script.write_text("import sys, time\nfrom agentflow.runtime.store import Store\n" + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"child never printed {prefix!r}; stderr: {proc.stderr.read()[-2000:]}")


# ---------------------------------------------------------------- round trips


def test_round_trip_of_batches(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="build", entry="main", plan_hash="p1", inputs={"topic": "dogs"}, at=T0)
        s.node_pending("r1", "main/review", role="reviewer")
        s.node_started("r1", "main/plan", role="architect", key="k-plan", def_hash="d1",
                       input_hash="i1", input_hashes={"topic": "h-topic"}, at=T0)
        s.record_llm_call("r1", "main/plan", model="gpt-x", prompt_tokens=100, completion_tokens=20,
                          cost_usd=0.5, latency_ms=40.0, at=T0)
        s.append_turn("r1", "main/plan", key="k-plan", kind="assistant", payload={"content": "one"})
        s.flush()  # started and finished land in different flushes: the second one upserts
        s.record_llm_call("r1", "main/plan", model="gpt-x", prompt_tokens=10, completion_tokens=2,
                          cost_usd=0.25, latency_ms=30.0, at=T0)
        s.record_llm_call("r1", "main/plan", model="gpt-x", prompt_tokens=7, completion_tokens=7,
                          cost_usd=9.0, cached=True, at=T0)  # replayed: not paid again
        s.append_turn("r1", "main/plan", key="k-plan", kind="tool", payload={"content": "two"})
        vh = s.node_finished("r1", "main/plan", status="succeeded", value={"modules": ["a", "b"]},
                             attempts=2, at=T0 + timedelta(seconds=3))
        assert vh == value_hash({"modules": ["a", "b"]})
        s.node_reused("r1", "main/plan2", role="architect", key="k-plan", value_hash=vh, at=T0)
        s.node_started("r1", "main/code", role="coder", key="k-code", at=T0)
        s.node_finished("r1", "main/code", status="failed", error="boom", at=T0 + timedelta(seconds=1))
        s.append_session("r1", "architect", [{"role": "user", "content": "hi"}])
        s.append_session("r1", "architect", [{"role": "assistant", "content": "yo"}])
        s.finish_run("r1", "failed", at=T0 + timedelta(seconds=5))

    with Store.open_reader(db) as r:
        run = r.get_run("r1")
        assert run["status"] == "failed" and run["flow"] == "build" and run["entry"] == "main"
        assert run["started_at"] == T0 and run["finished_at"] == T0 + timedelta(seconds=5)
        assert run["inputs"] == {"topic": "dogs"} and run["plan_hash"] == "p1" and not run["live"]
        assert (run["nodes"], run["succeeded"], run["failed"], run["pending"], run["cached"]) == (4, 2, 1, 1, 1)
        assert run["prompt_tokens"] == 110 and run["cost_usd"] == pytest.approx(0.75)

        nodes = {n["node"]: n for n in r.run_nodes("r1")}
        plan = nodes["main/plan"]
        assert (plan["status"], plan["cached"], plan["attempts"], plan["duration_ms"]) == ("succeeded", False, 2, 3000)
        assert (plan["prompt_tokens"], plan["completion_tokens"], plan["llm_calls"]) == (110, 22, 2)
        assert nodes["main/plan2"]["cached"] is True and nodes["main/plan2"]["attempts"] == 0
        assert nodes["main/code"]["error"] == "boom" and nodes["main/code"]["role"] == "coder"
        assert nodes["main/review"]["status"] == "pending"

        progress = r.run_progress("r1")
        assert progress["main/plan"] == ("succeeded", "k-plan") and progress["main/review"] == ("pending", None)
        assert set(progress) == set(nodes)
        plan_state = r.node_state("r1", "main/plan")
        assert plan_state is not None and plan_state.key == "k-plan" and plan_state.output_hash == vh
        assert plan_state.input_hashes == {"topic": "h-topic"} and plan_state.def_hash == "d1"
        assert r.node_state("r1", "main/code").output_hash is None
        # one node alone (the page and `show RUN NODE` ask for one of maybe 100k)
        assert r.run_nodes("r1", "main/plan") == [plan] and r.run_nodes("r1", "main/nothing") == []
        assert r.run_statuses("r1") == {n: (x["status"], x["cached"]) for n, x in nodes.items()}
        assert r.node_state("r1", "main/nothing") is None

        assert r.lookup_results(["k-plan", "k-code"]) == {"k-plan": ({"modules": ["a", "b"]}, vh)}
        assert [(t.seq, t.kind, t.payload) for t in r.load_turns("r1", "main/plan")] == [
            (0, "assistant", {"content": "one"}), (1, "tool", {"content": "two"})]
        assert r.load_turns("r1", "main/plan", key="other") == []
        assert r.load_session("r1", "architect") == [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "yo"}]
        assert r.latest_run("build", "main", unfinished_only=True)["run_id"] == "r1"
        assert r.latest_run("build", "other") is None
        assert r.check_consistency() == []


# Text that SQL spells with care: quotes, backslashes, a NUL, line breaks, non-ASCII.
AWKWARD = ["it's", "''", "a\\'b\\", "x\x00y", "line\nbreak\r\t", "é✓\u2028😀", "'); DROP TABLE _runs; --", ""]


def test_one_row_commits_store_any_text_and_number_exactly(db: Path) -> None:
    """A flush per node writes one-row batches (each commit of a strict run): every value
    reads back exactly as it was given, as from a batch of many rows."""
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={}, at=T0)
        s.flush()
        for i, text in enumerate(AWKWARD):
            node = f"main/{text}"
            s.node_started("r1", node, role=text, key=f"k{i}{text}", def_hash=text, input_hashes={text: text}, at=T0)
            s.record_llm_call("r1", node, model=text, prompt_tokens=2 ** 40, cost_usd=0.1 + i, latency_ms=1e-7, at=T0)
            s.node_finished("r1", node, status="succeeded", value={text: [text, i, -0.5, None, True]},
                            at=T0 + timedelta(milliseconds=1500))
            s.flush()
        s.node_started("r1", "main/bad", role=None, key="k-bad", at=T0)
        s.node_finished("r1", "main/bad", status="failed", error=AWKWARD[3], at=T0)
        s.flush()
    with Store.open_reader(db) as r:
        nodes = {n["node"]: n for n in r.run_nodes("r1")}
        progress = r.run_progress("r1")
        for i, text in enumerate(AWKWARD):
            node = nodes[f"main/{text}"]
            assert (node["role"], node["duration_ms"], node["prompt_tokens"]) == (text, 1500, 2 ** 40)
            assert node["cost_usd"] == pytest.approx(0.1 + i)
            state = r.node_state("r1", f"main/{text}")
            assert state is not None and progress[f"main/{text}"] == ("succeeded", state.key)
            assert (state.key, state.def_hash, state.input_hashes) == (f"k{i}{text}", text, {text: text})
            assert r.lookup_results([state.key])[state.key][0] == {text: [text, i, -0.5, None, True]}
        assert nodes["main/bad"]["error"] == AWKWARD[3]
        assert r.check_consistency() == []


def test_resume_continues_rows_journals_and_totals(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={}, at=T0)
        s.node_started("r1", "n", role="w", key="k", at=T0)
        s.record_llm_call("r1", "n", model="m", prompt_tokens=5, cost_usd=1.0)
        s.append_turn("r1", "n", key="k", kind="assistant", payload=1)
        s.append_turn("r1", "n", key="k", kind="tool", payload=2)
        s.append_session("r1", "w", ["a"])
    # the process died here; a later run resumes the same run id
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p2", inputs={}, at=T0 + timedelta(hours=1))
        assert [t.payload for t in s.load_turns("r1", "n", key="k")] == [1, 2]
        s.append_turn("r1", "n", key="k", kind="assistant", payload=3)
        s.append_session("r1", "w", ["b"])
        s.record_llm_call("r1", "n", model="m", prompt_tokens=6, cost_usd=1.0)
        s.node_finished("r1", "n", status="succeeded", value="done", key="k", at=T0 + timedelta(hours=1))
        s.node_started("r1", "m", role="w", key="km")
        s.reset_turns("r1", "m")
        s.append_turn("r1", "m", key="km", kind="assistant", payload="x")
        s.flush()
        s.node_finished("r1", "m", status="failed", error="bad")
        s.reset_turns("r1", "m")  # a failed node starts its journal afresh
        s.append_turn("r1", "m", key="km", kind="assistant", payload="y")
        s.finish_run("r1", "succeeded")
    with Store.open_reader(db) as r:
        assert [(t.seq, t.payload) for t in r.load_turns("r1", "n")] == [(0, 1), (1, 2), (2, 3)]
        assert [(t.seq, t.payload) for t in r.load_turns("r1", "m")] == [(0, "y")]
        assert r.load_session("r1", "w") == ["a", "b"]
        run = r.get_run("r1")
        assert run["started_at"] == T0 and run["plan_hash"] == "p2" and run["status"] == "succeeded"
        n = {x["node"]: x for x in r.run_nodes("r1")}["n"]
        assert (n["status"], n["attempts"], n["prompt_tokens"], n["cost_usd"]) == ("succeeded", 1, 11, 2.0)
        assert r.lookup_results(["k"])["k"][0] == "done"
        assert r.check_consistency() == []


def test_reset_sessions_forgets_one_runs_sessions_before_what_follows(db: Path) -> None:
    with Store.open_writer(db) as s:
        for run in ("r1", "r2"):
            s.begin_run(run, flow="f", entry="main", plan_hash="p", inputs={})
            s.append_session(run, "w", ["a", "b"])
        s.flush()
        s.append_session("r1", "w", ["lost"])  # buffered, then forgotten with the rest
        s.reset_sessions("r1")
        s.append_session("r1", "w", ["c"])
        s.flush()
        s.append_session("r1", "w", ["d"])
    with Store.open_reader(db) as r:
        assert r.load_session("r1", "w") == ["c", "d"]
        assert r.load_session("r2", "w") == ["a", "b"]
        assert r.check_consistency() == []


def test_last_node_records_explain_reruns_across_runs(db: Path) -> None:
    with Store.open_writer(db) as s:
        for run, d, at in (("r1", "d-old", T0), ("r2", "d-new", T0 + timedelta(hours=1))):
            s.begin_run(run, flow="f", entry="main", plan_hash="p", inputs={}, at=at)
            s.node_started(run, "main/a", role="w", key=f"k-{d}", def_hash=d, input_hashes={"x": "hx"}, at=at)
            s.node_finished(run, "main/a", status="succeeded", value=d, at=at)
        s.begin_run("other", flow="g", entry="main", plan_hash="p", inputs={})
        s.node_started("other", "main/a", role="w", key="k-g", def_hash="d-g")
        previous = s.last_node_records("f", ["main/a", "main/missing"], exclude_run="r2")
        assert list(previous) == ["main/a"]
        assert (previous["main/a"].run_id, previous["main/a"].def_hash) == ("r1", "d-old")
        assert previous["main/a"].input_hashes == {"x": "hx"}
        assert s.last_node_records("f")["main/a"].def_hash == "d-new"


def test_result_journal_comes_from_the_call_that_stored_the_result(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={})
        s.node_started("r1", "main/a", role="w", key="k")
        s.append_turn("r1", "main/a", key="k", kind="assistant", payload={"content": "x"})
        s.append_turn("r1", "main/a", key="k", kind="session", payload={"messages": [1]})
        s.append_turn("r1", "main/b", key="k", kind="session", payload={"messages": ["other node"]})
        s.node_finished("r1", "main/a", status="succeeded", value="v")
        assert s.result_journal("k", "session") == [{"messages": [1]}]
        assert s.result_journal("missing", "session") == []


def test_a_key_stored_again_replaces_its_result(db: Path) -> None:
    with Store.open_writer(db) as s:
        for run, value in (("r1", "old"), ("r2", "new")):  # e.g. --force: same key, new value
            s.begin_run(run, flow="f", entry="main", plan_hash="p", inputs={})
            s.node_started(run, "n", role="w", key="same")
            s.node_finished(run, "n", status="succeeded", value=value)
            s.flush()
        assert s.lookup_results(["same"])["same"][0] == "new"
        assert s.check_consistency() == []


def test_bulk_lookup_is_one_query_over_many_keys(db: Path) -> None:
    n = 5000
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        for i in range(n):
            s.node_started("r", f"main/x[{i}]", role="w", key=f"key{i}")
            s.node_finished("r", f"main/x[{i}]", status="succeeded", value={"i": i})
        s.flush()
        queries = []
        real = s._run
        s._run = lambda q: queries.append(1) or real(q)  # type: ignore[method-assign]
        found = s.lookup_results([f"key{i}" for i in range(0, 2 * n, 2)])
        assert len(queries) == 1
    assert len(found) == n // 2
    assert found["key4998"] == ({"i": 4998}, value_hash({"i": 4998}))
    assert "key5000" not in found
    assert Store.open_reader(db).has_results(["key1", "nope"]) == {"key1"}


def test_lookup_answers_buffered_results_without_writing_them(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        s.node_started("r", "main/a", role="w", key="stored")
        s.node_finished("r", "main/a", status="succeeded", value="written")
        s.flush()
        s.node_started("r", "main/b", role="w", key="buffered")
        s.node_finished("r", "main/b", status="succeeded", value=["not", "yet"])
        writes = []
        real = s._write
        s._write = lambda batch: writes.append(batch) or real(batch)  # type: ignore[method-assign]
        found = s.lookup_results(["stored", "buffered", "absent"])
        assert writes == []  # a lookup waits for no flush
        assert found == {"stored": ("written", value_hash("written")),
                         "buffered": (["not", "yet"], value_hash(["not", "yet"]))}
    assert Store.open_reader(db).lookup_results(["buffered"])["buffered"][0] == ["not", "yet"]


def test_views_have_exactly_the_documented_columns(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
    con = duckdb.connect(str(db), read_only=True)  # what a user does
    try:
        for view, cols in PUBLIC_VIEWS.items():
            described = con.execute(f"DESCRIBE {view}").fetchall()
            assert tuple(r[0] for r in described) == cols
            types = {r[0]: r[1] for r in described}
            assert all(types[c] == "TIMESTAMP" for c in cols if c.endswith("_at"))
        assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        con.close()


def test_timestamps_are_stored_as_utc(db: Path) -> None:
    local = datetime(2025, 3, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={}, at=local)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT started_at FROM runs").fetchone()[0] == datetime(2025, 3, 1, 12, 0, 0)
    con.close()
    assert Store.open_reader(db).get_run("r")["started_at"] == T0


def test_a_failed_flush_keeps_its_facts_for_the_next_one(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        s.node_started("r", "a", role="w", key="ka")
        real = s._write_once

        def broken(batch, careful):
            s._write_once = real  # type: ignore[method-assign]
            raise OSError("disk full")
        s._write_once = broken  # type: ignore[method-assign]
        with pytest.raises(OSError):
            s.flush()
        s.record_llm_call("r", "a", model="m", prompt_tokens=3)
        s.node_finished("r", "a", status="succeeded", value=1)
        s.flush()
        node = s.run_nodes("r")[0]
        assert (node["status"], node["prompt_tokens"]) == ("succeeded", 3)
        assert s.check_consistency() == []


def test_group_commit_from_many_threads(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        commits = []
        real = s._write
        s._write = lambda b: commits.append(1) or real(b)  # type: ignore[method-assign]

        def work(t: int) -> None:
            for i in range(20):
                s.node_started("r", f"t{t}/{i}", role="w", key=f"k{t}/{i}")
                s.node_finished("r", f"t{t}/{i}", status="succeeded", value=i)
                s.flush()
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.get_run("r")["succeeded"] == 160
        assert len(commits) < 160  # callers shared commits


@pytest.mark.parametrize("costly, committed", [
    ("a slow call's result", True), ("a model call", True), ("a task-loop step", True),
    ("a quick call's result", False), ("an instant (scripted) model call", False)])
def test_group_commit_writes_costly_facts_on_the_recording_thread_when_the_janitor_is_late(
        db: Path, costly: str, committed: bool) -> None:
    """A janitor starved of the GIL (test_rerun_and_durability.py has the real case) is stood
    in for by a stopped one: costly facts past their window commit at the next node's end, on
    the thread that records it; trivial ones wait for the janitor, as cheap to redo."""
    with Store.open_writer(db) as s:
        s.commit_within(0.1)
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        s.flush()
        assert s._janitor is not None
        s._stop.set()
        s._janitor.join()
        started = datetime.now(timezone.utc) - timedelta(seconds=0.05 if costly == "a slow call's result" else 0)
        s.node_started("r", "a", role="w", key="ka", at=started)
        if costly == "a model call":
            s.record_llm_call("r", "a", model="m", latency_ms=800.0)
        elif costly == "an instant (scripted) model call":
            s.record_llm_call("r", "a", model="scripted", latency_ms=0.1)
        elif costly == "a task-loop step":
            s.append_turn("r", "a", key="ka", kind="assistant", payload={"content": "hi"})
        s.node_finished("r", "a", status="succeeded", value=1)
        time.sleep(0.2)  # the window passes
        s.node_reused("r", "b", role="w", key="kb", value_hash=value_hash(1))
        assert s._buf.empty() is committed


def test_reader_in_the_writing_process_reads_through_the_writer(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        s.flush()
        r = Store.open_reader(db)
        assert r.list_runs()[0]["live"] is True
        s.finish_run("r", "succeeded")
        assert r.list_runs()[0]["status"] == "succeeded"  # it sees the writer's buffer too
        r.close()


# ---------------------------------------------------------------- errors a user can act on


def test_newer_schema_version_is_refused_with_a_clear_message(db: Path) -> None:
    Store.open_writer(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    for opener in (Store.open_writer, Store.open_reader):
        with pytest.raises(StoreSchemaError) as err:
            opener(db)
        assert "newer agentflow" in str(err.value) and "99" in str(err.value)
        assert str(db.name) in str(err.value)
    Store.open_writer(db.with_name("other.duckdb")).close()  # and the lock was released


def test_not_a_database_directory_missing_and_foreign_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.duckdb"
    text.write_text("these are my notes, not a database\n" * 200)
    for opener in (Store.open_writer, Store.open_reader):
        with pytest.raises(StoreError, match="is not a DuckDB database"):
            opener(text)
        with pytest.raises(StoreError, match="is a directory"):
            opener(tmp_path)
    with pytest.raises(StoreError, match="no database at"):
        Store.open_reader(tmp_path / "missing.duckdb")
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE sales (x INTEGER)")
    con.close()
    for opener in (Store.open_writer, Store.open_reader):
        with pytest.raises(StoreError, match="not an agentflow one"):
            opener(foreign)
    assert text.read_text().startswith("these are my notes")  # left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.duckdb", "notes.duckdb"]  # no lock files


def test_a_failed_open_keeps_lock_files_it_did_not_make(tmp_path: Path) -> None:
    text = tmp_path / "notes.duckdb"
    text.write_text("these are my notes, not a database\n")
    lock, wait = tmp_path / "notes.duckdb.lock", tmp_path / "notes.duckdb.wait"
    lock.write_text("")
    wait.write_text("")
    for opener in (Store.open_writer, Store.open_reader):
        with pytest.raises(StoreError, match="is not a DuckDB database"):
            opener(text)
    assert lock.exists() and wait.exists()


def test_damaged_database_is_reported_not_raised_raw(db: Path) -> None:
    with Store.open_writer(db) as s:
        s.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        for i in range(3000):
            s.node_started("r", f"n{i}", role="w", key=f"k{i}")
            s.node_finished("r", f"n{i}", status="succeeded", value="x" * 50)
    data = bytearray(db.read_bytes())
    for off in range(16384, len(data), 4096):  # scribble over every block after the headers
        data[off + 64: off + 1064] = os.urandom(1000)
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        with Store.open_reader(db) as r:
            r.list_runs()
            r.lookup_results([f"k{i}" for i in range(3000)])
    assert not isinstance(err.value, duckdb.Error)
    assert "database" in str(err.value)


# ---------------------------------------------------------------- processes


WRITER = """
s = Store.open_writer(sys.argv[1])
s.begin_run("w", flow="f", entry="main", plan_hash="p", inputs={})
s.flush()
print("ready", flush=True)
i = 0
period = float(sys.argv[2])
while True:
    s.node_started("w", f"n{i}", role="w", key=f"k{i}")
    s.node_finished("w", f"n{i}", status="succeeded", value={"i": i, "pad": "x" * 200})
    s.flush()
    print(f"flushed {i} {time.time()}", flush=True)
    i += 1
    time.sleep(period)
"""


def test_second_writer_fails_fast_naming_the_holder(tmp_path: Path, db: Path) -> None:
    proc = child(tmp_path, "agentflow_run_x", WRITER, str(db), "0.2")
    try:
        wait_line(proc, "ready")
        started = time.monotonic()
        with pytest.raises(StoreLocked) as err:
            Store.open_writer(db)
        assert time.monotonic() - started < 1.0
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "agentflow_run_x.py" in message
        assert "agentflow.duckdb" in message and "--db" in message
        assert err.value.pid == proc.pid
        # and the other way round: a writer process finds this one
        proc.kill()
        proc.wait()
        with Store.open_writer(db):
            other = child(tmp_path, "second", """
            from agentflow.runtime.store import StoreLocked
            try:
                Store.open_writer(sys.argv[1])
            except StoreLocked as err:
                print("locked", err.pid, err, flush=True)
            """, str(db))
            line = wait_line(other, "locked")
            other.wait(10)
        assert line.split()[1] == str(os.getpid())
    finally:
        proc.kill()
        proc.wait()


CREATING = """
import fcntl, os
import duckdb
from agentflow.runtime.store import schema
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(lock, fcntl.LOCK_EX)  # a writer's lock, holding its pid, as a writer takes it
os.pwrite(lock, f"{os.getpid()}\\n{' '.join(sys.argv)}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(0.4)  # no file yet
duckdb.connect(path).close()  # the file as DuckDB makes it, before a schema is committed
print("made", flush=True)
time.sleep(0.4)
while True:  # as a writer attaches: again while a reader has the file open
    try:
        con = duckdb.connect(path)
        break
    except duckdb.IOException:
        time.sleep(0.01)
schema.ensure_schema(con, path, writer=True)
con.close()
print("created", flush=True)
time.sleep(0.5)
"""


def test_a_reader_waits_for_a_database_a_live_writer_is_creating(tmp_path: Path, db: Path) -> None:
    """A reader that comes while a run starts sees its database, not "no database" or "an
    empty database" (the moments before the writer commits the schema)."""
    proc = child(tmp_path, "creating", CREATING, str(db))
    try:
        wait_line(proc, "locked")
        assert not db.exists()
        with Store.open_reader(db) as reader:
            assert reader.list_runs() == []
        assert proc.stdout.readline().startswith("made")
    finally:
        proc.kill()
        proc.wait()
    # with no live writer, an empty database is reported at once
    db.unlink()
    duckdb.connect(str(db)).close()
    started = time.monotonic()
    with pytest.raises(StoreError, match="is an empty database; nothing has run there yet"):
        Store.open_reader(db)
    assert time.monotonic() - started < 1.0


def test_readers_see_a_live_writer_within_a_second(tmp_path: Path, db: Path) -> None:
    proc = child(tmp_path, "writer", WRITER, str(db), "0.1")
    flushed: list[tuple[int, float]] = []

    def follow() -> None:
        for line in proc.stdout:
            if line.startswith("flushed"):
                _, i, t = line.split()
                flushed.append((int(i), float(t)))
    try:
        wait_line(proc, "ready")
        threading.Thread(target=follow, daemon=True).start()
        reader = Store.open_reader(db)
        deadline = time.time() + 3.0
        reads = 0
        while time.time() < deadline:
            runs = reader.list_runs()  # would raise if the file stayed held
            seen_at = time.time()
            reads += 1
            assert runs[0]["run_id"] == "w" and runs[0]["live"] is True
            # everything the writer committed more than a second ago is visible
            due = [i for i, t in list(flushed) if t < seen_at - 1.0]
            if due:
                assert runs[0]["succeeded"] >= max(due) + 1
            time.sleep(0.05)
        assert reads >= 10 and len(flushed) >= 10  # the writer was not starved either
        assert proc.poll() is None
        reader.close()
    finally:
        proc.kill()
        proc.wait()
    reader = Store.open_reader(db)
    assert reader.list_runs()[0]["live"] is False  # killed while "running"
    assert reader.check_consistency() == []


KILLED = """
s = Store.open_writer(sys.argv[1])
s.begin_run("k", flow="f", entry="main", plan_hash="p", inputs={})
i = 0
while True:
    for j in range(int(sys.argv[2])):
        s.node_started("k", f"n{i}", role="w", key=f"k{i}")
        s.record_llm_call("k", f"n{i}", model="m", prompt_tokens=3)
        s.append_turn("k", f"n{i}", key=f"k{i}", kind="assistant", payload={"t": "y" * 300})
        s.node_finished("k", f"n{i}", status="succeeded", value={"i": i, "pad": "x" * 300})
        i += 1
        s.node_started("k", f"n{i}", role="w", key=f"k{i}")  # left running
    s.flush()
    print(f"flushed {i}", flush=True)
    time.sleep(float(sys.argv[3]))  # > IDLE_DETACH_S: the kill may land in a checkpoint
"""


@pytest.mark.parametrize("batch,pause,delay", [(50, 0, 0.3), (2000, 0, 0.9), (300, 0.2, 0.75)])
def test_kill_9_while_flushing_leaves_a_sound_database(tmp_path: Path, db: Path, batch: int, pause: float,
                                                       delay: float) -> None:
    proc = child(tmp_path, "killed", KILLED, str(db), str(batch), str(pause))
    committed = -1
    try:
        wait_line(proc, "flushed", timeout=20)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:
            if line.startswith("flushed"):
                committed = int(line.split()[1])
    finally:
        proc.kill()
        proc.wait()
    assert committed > 0
    with Store.open_writer(db) as s:  # the lock is free and the file opens
        assert s.check_consistency() == []
        progress = s.run_progress("k")
        done = [n for n, st in progress.items() if st.status == "succeeded"]
        assert len(done) >= committed  # every reported flush survived
        assert len(s.lookup_results(progress[n].key for n in done)) == len(done)
        assert len(s.load_turns("k", "n0")) == 1


CLOSED_THEN_KILLED = """
s = Store.open_writer(sys.argv[1])
s.begin_run("c", flow="f", entry="main", plan_hash="p", inputs={}, fingerprint="fp-c")
for i in range(200):
    s.node_started("c", f"main/n{i}", role=None, key=f"k{i}")
    s.node_finished("c", f"main/n{i}", status="succeeded", value=i)
s.finish_run("c", "succeeded", value=199)
s.close(checkpoint=False)
print("closed", flush=True)
time.sleep(60)
"""


def test_a_close_without_checkpoint_leaves_its_log_and_a_kill_after_it_loses_nothing(tmp_path: Path,
                                                                                    db: Path) -> None:
    """A writer closed without a checkpoint (a no-op rerun) leaves its write-ahead log, and
    readers, the next writer and other programs see every fact it committed."""
    proc = child(tmp_path, "closer", CLOSED_THEN_KILLED, str(db))
    try:
        wait_line(proc, "closed", timeout=30)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    wal = db.with_name(db.name + ".wal")
    assert wal.stat().st_size > 0  # the commits are in the log, not yet in the file
    with Store.open_reader(db) as r:
        run = r.get_run("c")
        assert (run["status"], run["nodes"], run["succeeded"]) == ("succeeded", 200, 200)
        assert r.finished_run("fp-c") == ("c", 199) and r.check_consistency() == []
    with duckdb.connect(str(db), read_only=True) as con:  # another program replays the log too
        assert con.execute("SELECT count(*) FROM node_runs WHERE run_id = 'c'").fetchone() == (200,)
    with Store.open_writer(db) as s:  # an ordinary close checkpoints the log into the file
        s.copy_run("c", "c2")
    assert not wal.exists() or wal.stat().st_size == 0
    with Store.open_reader(db) as r:
        assert r.get_run("c2")["succeeded"] == 200 and r.get_run("c")["succeeded"] == 200


def test_a_close_without_checkpoint_checkpoints_a_log_past_the_bound(db: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from agentflow.runtime.store import access
    wal = db.with_name(db.name + ".wal")
    s = Store.open_writer(db)
    _stored_run(s, "r1", "f", {"main/a": 1})
    s.close(checkpoint=False)
    assert wal.stat().st_size > 0
    monkeypatch.setattr(access, "CLOSE_CHECKPOINT_WAL_BYTES", 1)
    s = Store.open_writer(db)
    _stored_run(s, "r2", "f", {"main/a": 2})
    s.close(checkpoint=False)
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed into the file
    with Store.open_reader(db) as r:
        assert r.finished_run("fp-r1") == ("r1", [1]) and r.finished_run("fp-r2") == ("r2", [2])


def test_an_idle_writer_checkpoints_a_small_log_and_keeps_a_large_one(db: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle, a writer lets go of the file and checkpoints its log, so that programs that do
    not ask (the duckdb CLI) can open it; not with a log of IDLE_DETACH_MAX_WAL_BYTES or more,
    whose checkpoint would cut the run's rows in row groups a later checkpoint rewrites."""
    from agentflow.runtime.store import access, writes
    wal = db.with_name(db.name + ".wal")
    monkeypatch.setattr(writes, "IDLE_DETACH_MAX_WAL_BYTES", 1)  # any log is large
    s = Store.open_writer(db)
    try:
        _stored_run(s, "r1", "f", {"main/a": 1})
        s.flush()
        time.sleep(10 * writes.IDLE_DETACH_S)
        assert wal.stat().st_size > 0  # idle for long, and still in the log
        monkeypatch.setattr(writes, "IDLE_DETACH_MAX_WAL_BYTES", access.IDLE_DETACH_MAX_WAL_BYTES)  # the real bound
        wait_until(lambda: not wal.exists() or wal.stat().st_size == 0, timeout=5,
                   what="the idle writer to checkpoint its small log")
        with duckdb.connect(str(db), read_only=True) as con:  # another program opens the file
            assert con.execute("SELECT status FROM runs WHERE run_id = 'r1'").fetchall() == [("succeeded",)]
    finally:
        s.close()


def test_a_long_query_draws_no_progress_bar_on_standard_output(db: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """DuckDB draws a progress bar on standard output for a query over `progress_bar_time`
    (2 s): standard output holds a run's result alone, and `--json` output."""
    with Store.open_writer(db) as s:
        def long_query(con: duckdb.DuckDBPyConnection) -> int:
            con.execute("SET progress_bar_time = 0")  # as if the query ran for long
            return con.execute("SELECT count(*) FROM range(3000) a, range(3000) b").fetchone()[0]
        assert s._read(long_query) == 9_000_000
    assert capfd.readouterr().out == ""


# ---------------------------------------------------------------- schema versions

# What schema version 1 (the first release) created: a database of the previous version.
SCHEMA_V1 = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE _runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR, entry VARCHAR, status VARCHAR NOT NULL,
    started_at TIMESTAMP, finished_at TIMESTAMP, plan_hash VARCHAR, inputs JSON, pid INTEGER);
CREATE TABLE _node_runs (
    run_id VARCHAR NOT NULL, node_id VARCHAR NOT NULL, role VARCHAR, status VARCHAR NOT NULL,
    cached BOOLEAN NOT NULL, attempts INTEGER NOT NULL, started_at TIMESTAMP,
    finished_at TIMESTAMP, error VARCHAR, key VARCHAR, def_hash VARCHAR, input_hash VARCHAR,
    input_hashes JSON, output_hash VARCHAR, duration_ms BIGINT,
    prompt_tokens BIGINT NOT NULL DEFAULT 0, completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE NOT NULL DEFAULT 0, llm_calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, node_id));
CREATE TABLE _results (
    key VARCHAR PRIMARY KEY, value JSON NOT NULL, value_hash VARCHAR NOT NULL,
    run_id VARCHAR, node_id VARCHAR, created_at TIMESTAMP);
CREATE TABLE _turns (
    run_id VARCHAR NOT NULL, node_id VARCHAR NOT NULL, seq INTEGER NOT NULL, key VARCHAR,
    kind VARCHAR, payload JSON, created_at TIMESTAMP);
CREATE TABLE _llm_calls (
    run_id VARCHAR NOT NULL, node_id VARCHAR, model VARCHAR, prompt_tokens BIGINT,
    completion_tokens BIGINT, cost_usd DOUBLE, latency_ms DOUBLE, cached BOOLEAN,
    created_at TIMESTAMP);
CREATE TABLE _sessions (
    run_id VARCHAR NOT NULL, role VARCHAR NOT NULL, seq INTEGER NOT NULL, message JSON,
    created_at TIMESTAMP);
CREATE VIEW runs AS SELECT run_id, flow, entry, status, started_at, finished_at FROM _runs;
CREATE VIEW node_runs AS SELECT run_id, node_id, role, status, cached, attempts, started_at,
    finished_at, error FROM _node_runs;
CREATE VIEW llm_calls AS SELECT run_id, node_id, model, prompt_tokens, completion_tokens, cost_usd,
    latency_ms, cached, created_at FROM _llm_calls;
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO _runs VALUES ('old', 'build', 'main', 'succeeded', TIMESTAMP '2025-03-01 12:00:00',
    TIMESTAMP '2025-03-01 12:01:00', 'p1', '{}', 1);
INSERT INTO _results VALUES ('k-old', '"stored"', 'h-old', 'old', 'main/a', NULL);
INSERT INTO _node_runs (run_id, node_id, status, cached, attempts, key, output_hash)
    VALUES ('old', 'main/a', 'succeeded', false, 1, 'k-old', 'h-old');
"""


def make_v1_database(db: Path) -> None:
    """A database as the first release made it (SCHEMA_V1), for the migration tests."""
    db.parent.mkdir(parents=True)
    with duckdb.connect(str(db)) as con:
        for stmt in SCHEMA_V1.split(";"):
            if stmt.strip():
                con.execute(stmt)


def test_a_database_of_the_previous_schema_version_opens_and_works(db: Path) -> None:
    make_v1_database(db)
    with Store.open_reader(db) as reader:  # a reader reads it as it is
        assert reader.get_run("old")["status"] == "succeeded"
    with Store.open_writer(db) as s:  # a writer upgrades it, keeping what it holds
        assert s.get_run("old")["status"] == "succeeded"
        assert s.lookup_results(["k-old"]) == {"k-old": ("stored", "h-old")}
        s.begin_run("new", flow="build", entry="main", plan_hash="p1", inputs={}, fingerprint="fp")
        s.finish_run("new", "succeeded", value={"b": 1, "a": [2]})
        assert s.finished_run("fp") == ("new", {"b": 1, "a": [2]})
        assert list(s.finished_run("fp")[1]) == ["b", "a"]  # the value keeps its key order
        assert s.check_consistency() == []
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    con.close()


def test_an_older_database_gains_the_programs_table_and_view(db: Path) -> None:
    make_v1_database(db)
    with Store.open_writer(db) as s:
        s.record_program("old", "main/a", 1, source="return 1", status="running")
        s.record_program("old", "main/a", 1, source="return 1", status="succeeded")  # the latest row wins
        s.record_program("old", "main/a", 2, source="return x", status="rejected", diagnostics="error[E101]")
        s.flush()
        assert s.check_consistency() == []
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT run_id, node_id, attempt, source, status, diagnostics, created_at IS NOT NULL "
                           "FROM programs ORDER BY attempt").fetchall()
    assert rows == [("old", "main/a", 1, "return 1", "succeeded", None, True),
                    ("old", "main/a", 2, "return x", "rejected", "error[E101]", True)]


def test_a_database_older_than_every_migration_is_refused_with_a_clear_message(db: Path) -> None:
    Store.open_writer(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreSchemaError, match="schema version 0, which this agentflow cannot upgrade"):
        Store.open_writer(db)


# ---------------------------------------------------------------- preloading and copying runs


def _stored_run(s: Store, run_id: str, flow: str, values: dict[str, object]) -> None:
    s.begin_run(run_id, flow=flow, entry="main", plan_hash="p", inputs={}, fingerprint=f"fp-{run_id}")
    for node, value in values.items():
        s.node_started(run_id, node, role=None, key=f"k-{run_id}-{node}")
        s.node_finished(run_id, node, status="succeeded", value=value)
    s.append_session(run_id, "w", [{"role": "user", "content": "hi"}])
    s.finish_run(run_id, "succeeded", value=list(values.values()))


def test_preload_gives_the_flows_results_by_key_within_its_bounds(db: Path) -> None:
    with Store.open_writer(db) as s:
        _stored_run(s, "r1", "f", {"main/a": 1, "main/b": {"x": "two words"}})
        _stored_run(s, "r2", "other", {"main/a": 3})
        found = s.preload_results("f", 100, 1 << 20, 100)
        assert set(found.values) == {"k-r1-main/a", "k-r1-main/b"}
        assert found.result("k-r1-main/b") == ({"x": "two words"}, value_hash({"x": "two words"}))
        assert not found.answers("k-r1-main/b")  # handed out once, then let go: the store answers
        assert found.answers("k-unknown") and found.result("k-unknown") is None  # known missing
        assert not found.answers("k-r2-main/a")  # stored by another flow: the store answers
        found.stored("k-unknown")  # stored during the run: from now on the store answers
        assert not found.answers("k-unknown")
        bounded = s.preload_results("f", 1, 1 << 20, 2)
        assert len(bounded.values) == 1 and bounded.others is None
        assert not bounded.answers("k-unknown")  # too many keys to know: the store answers


def test_copy_run_records_a_finished_run_again_in_one_go(db: Path) -> None:
    with Store.open_writer(db) as s:
        _stored_run(s, "r1", "f", {"main/a": 1, "main/b": 2})
        s.copy_run("r1", "r2")
        run = s.get_run("r2")
        assert (run["status"], run["nodes"], run["succeeded"], run["cached"]) == ("succeeded", 2, 2, 2)
        assert s.finished_run("fp-r1") == ("r2", [1, 2])  # the newest run with the fingerprint
        assert s.load_session("r2", "w") == s.load_session("r1", "w") == [{"role": "user", "content": "hi"}]
        assert s.run_progress("r2")["main/a"].key == "k-r1-main/a"
        assert s.check_consistency() == []


def test_copy_run_counts_as_reused_the_structures_with_a_node_inside(db: Path) -> None:
    """As a rerun records them: a `for` over an empty list, or a call with no call inside, reused nothing."""
    calls = ["main/rs[0]/x", "main/rs[1]/x", "main/sub/inner#1/y", "main/rs2b"]
    structures = ["main/rs", "main/rs2", "main/empty", "main/sub", "main/sub/inner", "main/sub/in"]
    with Store.open_writer(db) as s:
        s.begin_run("r1", flow="f", entry="main", plan_hash="p", inputs={}, fingerprint="fp")
        for node in calls + structures:
            s.node_started("r1", node, role=None, key=f"structure:r1:{node}" if node in structures else f"k-{node}")
            s.node_finished("r1", node, status="succeeded", value=1)
        s.finish_run("r1", "succeeded", value=1)
        s.copy_run("r1", "r2")
        cached = {n["node"]: n["cached"] for n in s.run_nodes("r2")}
    assert {node for node, reused in cached.items() if reused} == set(calls) | {"main/rs", "main/sub", "main/sub/inner"}


def test_an_older_database_gains_the_agents_view_and_stores_recipes_by_version(db: Path) -> None:
    from agentflow.runtime.store import AgentRecipe
    make_v1_database(db)
    with Store.open_reader(db) as reader:  # a reader reads it as it is: no agent was created there
        assert reader.agent_versions() == []
    recipe = AgentRecipe("architect", "solver", "You add.", ("add",), None, 1)
    with Store.open_writer(db) as s:
        assert s.save_recipe(recipe, "r1", "main/p") == 1
        assert s.save_recipe(recipe, "r2", "main/p") == 1  # the same recipe again: no new version
        assert s.save_recipe(replace(recipe, tools=("add", "mul")), "r2", "main/p") == 2
        assert s.save_recipe(recipe, "r3", "main/p") == 3  # back to the first: the latest differs
        assert s.save_recipe(replace(recipe, name="other"), "r3", "main/p") == 1
        assert s.latest_recipes("architect") == [replace(recipe, name="other", version=1), replace(recipe, version=3)]
        assert s.latest_recipes("nobody") == []
        assert s.check_consistency() == []
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT name, creator, version, tools, created_run_id FROM agents ORDER BY name, version"
                           ).fetchall() == [("architect/other", "architect", 1, '["add"]', "r3"),
                                            ("architect/solver", "architect", 1, '["add"]', "r1"),
                                            ("architect/solver", "architect", 2, '["add","mul"]', "r2"),
                                            ("architect/solver", "architect", 3, '["add"]', "r3")]
