"""Deterministic sales tools used by specs/analyst_programs.agentflow."""
from __future__ import annotations

import json
from pathlib import Path

SPECS = Path(__file__).resolve().parents[1]


def load_sales(path: str) -> list[dict]:
    """The records of a JSON file in the specs directory (a name, not a path elsewhere)."""
    return json.loads((SPECS / Path(path).name).read_text(encoding="utf-8"))


def regions(sales: list[dict]) -> list[str]:
    return sorted({s["region"] for s in sales})


def region_total(sales: list[dict], region: str) -> dict:
    """A region's total, and the month it sold most in."""
    own = [s for s in sales if s["region"] == region]
    best = max(own, key=lambda s: s["amount"])
    return {"region": region, "total": round(sum(s["amount"] for s in own), 2), "best_month": best["month"]}
