"""agentflow: a declarative language and a durable, incremental runner for multi-agent LLM workflows."""

__version__ = "0.1.0"
