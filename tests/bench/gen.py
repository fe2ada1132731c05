"""Generated programs for the benchmarks (N bindings of realistic shape), and the
environment their `agentflow` processes run in."""
from __future__ import annotations

import os

# Python's default: modules are byte-compiled once and the .pyc reused, as on a user's
# machine. (Some sandboxes set PYTHONDONTWRITEBYTECODE, which makes every process
# recompile agentflow's modules: ~40 ms more per process.)
BENCH_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}

HEADER = """
defaults {
  model = "scripted"
}

type Item {
  name: str
  score: int
}

tool square(x: int) -> int {
  python = "benchtools:square"
}

role worker {
  system = "You work."
  replicas = 100

  task handle(item: Item, note: str = "") -> Item {
    prompt = "Handle {item.name} ({note})"
  }
}
"""


def wide_program(bindings: int) -> str:
    """`bindings` top-level bindings in links of ten: a tool call on the previous link's
    result, then arithmetic on it. Every binding is used, so the program compiles clean."""
    lines = [HEADER, "choreography main(seed: int) -> int {"]
    for i in range(bindings):
        if i == 0:
            lines.append("  b0 = square(seed)")
        elif i % 10 == 0:
            lines.append(f"  b{i} = square(b{i - 1} - {i})")
        else:
            lines.append(f"  b{i} = b{i - 1} + {i % 7} * 2")
    lines.append(f"  return b{bindings - 1}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def fanout_program() -> str:
    """One `for` over N items, each a trivial python tool call. `note` changes no node: a
    rerun given another note reuses every node through the engine (not a no-op rerun)."""
    return HEADER + """
choreography main(items: list[int], salt: int = 0, note: str = "") -> int {
  results = for i in items {
    yield square(i + salt)
  }
  return len(results)
}
"""


STEP_HEADER = """
type Count {
  count: int
}

tool step(k: int, prev: int = 0) -> Count {
  python = "benchtools:step"
}
"""


def chain_program(steps: int) -> str:
    """A chain: `s{k} = step(k, s{k-1}.count)`, each step needing the one before."""
    lines = [STEP_HEADER, 'choreography main(note: str = "") -> int {', "  s0 = step(0, 0)"]
    lines += [f"  s{k} = step({k}, s{k - 1}.count)" for k in range(1, steps)]
    lines += [f"  return s{steps - 1}.count", "}"]
    return "\n".join(lines) + "\n"


def repeat_program(iterations: int) -> str:
    """An agent loop: `repeat max N` whose every iteration needs the previous one's result."""
    return STEP_HEADER + f"""
choreography main(note: str = "") -> int {{
  loop = repeat max {iterations} until s.count < 0 {{
    s = step(1, prev.s.count)
  }}
  return loop.s.count
}}
"""


BENCH_TOOLS = '''
def square(x: int) -> int:
    return x * x


def step(k: int, prev: int) -> dict:
    return {"count": prev + k}
'''

# The same tools as coroutines: they run on the event loop, where sync ones run on a worker
# thread (a thread hand-off each way per call), as a runner's trivial async steps do.
BENCH_TOOLS_ASYNC = BENCH_TOOLS.replace("def ", "async def ")
