"""The .agentflow grammar, shipped as package data."""
from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("agentflow.lark")
