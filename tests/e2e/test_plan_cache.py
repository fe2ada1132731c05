"""The plan cache as users meet it: `agentflow compile` and `run` of an unchanged spec read
the plan back instead of compiling (no parser is even imported), with the same output; an
edit, another entry, a damaged or foreign cache file, or a cache that cannot be written
changes nothing users see. Real subprocesses, a cache directory of the test's own."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from agentflow.compiler import plan_cache

from runtime_support import af, base_env, ok, write

SPEC = """
defaults {
  model = "scripted"
}

role writer {
  task draft(topic: str) -> str { prompt = "Draft {topic}" }
}

role unused {
  task idle() -> str { prompt = "idle" }
}

choreography main(topic: str) -> str {
  d = writer.draft(topic)
  return d
}

choreography other(topic: str) -> str {
  return topic
}
"""


def env(cache: Path, **extra: str) -> dict[str, str]:
    return base_env(AGENTFLOW_CACHE_DIR=str(cache), **extra)


def plans(cache: Path) -> list[Path]:
    return sorted((cache / "plans").glob("*.pickle"))


def compiled_with_parser(result) -> bool:
    """Whether the process (run with -X importtime) imported the parser: it compiled."""
    return "agentflow.compiler.parser" in result.stderr


def compile_timed(tmp_path: Path, cache: Path, *args: str, **extra: str):
    return af(tmp_path, "compile", "flow.agentflow", *args, env=env(cache, PYTHONPROFILEIMPORTTIME="1", **extra))


def diagnostics(result) -> str:
    return "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))


def test_an_unchanged_spec_compiles_once_and_reads_the_same_plan_back(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    cache = tmp_path / "cache"
    first = ok(compile_timed(tmp_path, cache, "--emit", "plan"))
    assert compiled_with_parser(first) and len(plans(cache)) == 1
    second = ok(compile_timed(tmp_path, cache, "--emit", "plan"))
    assert not compiled_with_parser(second)
    assert second.stdout == first.stdout
    assert "warning[W301]: role `unused` is never used" in diagnostics(second)
    assert diagnostics(second) == diagnostics(first)
    assert stat.S_IMODE((cache / "plans").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in plans(cache))


def test_a_run_from_a_cached_plan_is_the_run_of_the_compiled_one(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    cache = tmp_path / "cache"
    cold = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", "--no-cache", env=env(cache)))
    warm = ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=tea", "--no-cache", env=env(cache)))
    assert len(plans(cache)) == 1
    assert json.loads(warm.stdout) == json.loads(cold.stdout)
    # the cached plan carries the hash the compiled one has (the cache keeps it beside the plan)
    hashes = [r["plan_hash"] for r in json.loads(ok(af(tmp_path, "runs", "--json", env=env(cache))).stdout)]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    graph_cold = ok(af(tmp_path, "graph", "flow.agentflow", "--format", "json", env=env(tmp_path / "none")))
    graph_warm = ok(af(tmp_path, "graph", "flow.agentflow", "--format", "json", env=env(cache)))
    assert graph_warm.stdout == graph_cold.stdout


def test_an_edit_or_another_entry_compiles_again(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    cache = tmp_path / "cache"
    ok(compile_timed(tmp_path, cache))
    other = ok(compile_timed(tmp_path, cache, "--entry", "other", "--emit", "plan"))
    assert compiled_with_parser(other) and json.loads(other.stdout)["entry"] == "other"
    write(tmp_path / "flow.agentflow", SPEC.replace("return d", "return e"))
    broken = compile_timed(tmp_path, cache)
    assert broken.returncode == 1 and "error[E101]" in broken.stderr
    assert len(plans(cache)) == 2  # a spec with errors is never kept
    again = compile_timed(tmp_path, cache)
    assert again.returncode == 1 and compiled_with_parser(again)


def test_a_damaged_cache_file_is_compiled_over(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    cache = tmp_path / "cache"
    first = ok(compile_timed(tmp_path, cache, "--emit", "plan"))
    [entry] = plans(cache)
    entry.write_bytes(entry.read_bytes()[:100])  # as a disk that filled up would leave it
    again = ok(compile_timed(tmp_path, cache, "--emit", "plan"))
    assert compiled_with_parser(again) and again.stdout == first.stdout
    assert diagnostics(again) == diagnostics(first)
    assert not compiled_with_parser(ok(compile_timed(tmp_path, cache)))  # rewritten whole


def test_a_cache_file_others_may_write_is_not_loaded(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    cache = tmp_path / "cache"
    ok(compile_timed(tmp_path, cache))
    [entry] = plans(cache)
    entry.chmod(0o666)
    assert compiled_with_parser(ok(compile_timed(tmp_path, cache)))


def test_a_cache_that_cannot_be_written_or_is_off_changes_nothing(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory would be")
    for result in (compile_timed(tmp_path, blocked), compile_timed(tmp_path, blocked)):
        assert ok(result) and compiled_with_parser(result) and "W301" in result.stderr
    off = tmp_path / "off"
    ok(compile_timed(tmp_path, off, AGENTFLOW_PLAN_CACHE="0"))
    assert not off.exists()


def test_the_cache_keeps_the_most_recently_used_plans(tmp_path, monkeypatch):
    from agentflow.compiler.source import SourceFile
    monkeypatch.setenv("AGENTFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(plan_cache, "MAX_ENTRIES", 2)
    sources = [SourceFile("flow.agentflow", SPEC.replace("\"idle\"", f"\"idle {i}\"")) for i in range(3)]
    for source in sources[:2]:
        assert plan_cache.compile_cached(source).ok
    oldest = plans(tmp_path)
    os.utime(oldest[0], ns=(0, 0))
    os.utime(oldest[1], ns=(10**9, 10**9))
    assert plan_cache.compile_cached(sources[2]).ok
    kept = plans(tmp_path)
    assert len(kept) == 2 and oldest[0] not in kept and oldest[1] in kept


def test_without_a_known_home_directory_there_is_no_cache(monkeypatch):
    """`~` that does not expand (no HOME, no password entry) turns the cache off instead of
    making a directory named `~` in the current one."""
    for name in ("AGENTFLOW_CACHE_DIR", "XDG_CACHE_HOME", "AGENTFLOW_PLAN_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    assert plan_cache.cache_directory() is None
