"""Reuse across runs through litellm, counted at the server: a rerun pays nothing, an edited
prompt re-runs exactly that node and what its changed output reaches, and an upstream
re-run whose output is identical does not ripple (early cutoff)."""
from __future__ import annotations

from runtime_support import DB, SECRET, af, assert_no_secret, last_run, llm_defaults, ok, ran, requests_with, \
    result_json, reused, show, write

BODY = """
type Outline {
  title: str
  points: list[str]
}

role writer {
  system = "You write short texts."
  task outline(topic: str) -> Outline { prompt = "OUTLINE of {topic}" }
  task draft(o: Outline) -> str { prompt = "DRAFT about {o.title}" }
}

role editor {
  task polish(text: str) -> str { prompt = "POLISH {text}" }
  task tagline(topic: str) -> str { prompt = "TAGLINE for {topic}" }
  task caps(text: str) -> str { prompt = "CAPS {text}" }
}

choreography main(topic: str) -> json {
  o = writer.outline(topic)
  d = writer.draft(o)
  p = editor.polish(d)
  t = editor.tagline(topic)
  c = editor.caps(t)
  return {polish: p, caps: c}
}
"""
CALLS = {"main/o", "main/d", "main/p", "main/t", "main/c"}


def test_rerun_free_edit_reruns_exactly_what_changes_and_early_cutoff(tmp_path, server):
    spec = write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    run = lambda: ok(af(tmp_path, "run", "flow.agentflow", "--input", "topic=cats"))  # noqa: E731

    first = run()
    assert server.chat_count == 5
    value = result_json(first)
    assert value == {"polish": "echo: POLISH echo: DRAFT about title text", "caps": "echo: CAPS echo: TAGLINE for cats"}
    # structured output: the outline request asked for the Outline schema
    (outline_req,) = requests_with(server, "OUTLINE of cats")
    assert outline_req["response_format"]["type"] == "json_schema"
    assert set(outline_req["response_format"]["json_schema"]["schema"]["properties"]) == {"title", "points"}
    assert all(r["api_key"] == SECRET for r in server.requests)
    nodes = show(tmp_path, last_run(tmp_path)["run_id"], cli=True)
    assert ran(nodes) == CALLS and not reused(nodes)

    # 1. a rerun makes zero requests and gives the identical result
    second = run()
    assert server.chat_count == 5
    assert result_json(second) == value
    nodes = show(tmp_path, last_run(tmp_path)["run_id"], cli=True)
    assert reused(nodes) == CALLS and not ran(nodes)

    # 2. edit two prompts (one litellm start instead of two):
    #    - tagline: it re-runs and its output changes, so caps, which it reaches, re-runs;
    #    - outline: it re-runs, but the server answers the same Outline, so draft and
    #      polish are reused (early cutoff)
    spec.write_text(spec.read_text().replace("TAGLINE for", "TAGLINE (v2) for")
                    .replace("OUTLINE of", "OUTLINE (v2) of"))
    third = run()
    asked = sorted(r["messages"][-1]["content"] for r in server.requests[5:])
    assert asked == ["CAPS echo: TAGLINE (v2) for cats", "OUTLINE (v2) of cats", "TAGLINE (v2) for cats"]
    nodes = show(tmp_path, last_run(tmp_path)["run_id"], cli=True)
    assert ran(nodes) == {"main/o", "main/t", "main/c"}
    assert reused(nodes) == {"main/d", "main/p"}
    assert result_json(third) == {**value, "caps": "echo: CAPS echo: TAGLINE (v2) for cats"}

    for out in (first, second, third):
        assert_no_secret(out.stdout, out.stderr)
    assert_no_secret(tmp_path / DB)
