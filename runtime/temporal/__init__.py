"""The Temporal engine: the same plans, with model and tool calls on workers anywhere.

Modules: `workflow` (the generic workflow around the local engine's interpreter),
`activities` (one model call, one tool call), `worker` (`agentflow worker`), `client`
(`agentflow run --engine temporal`), `codec` (large payloads out of history), `wire` (what
travels). See docs/TEMPORAL.md. Nothing is imported here: the workflow sandbox loads this
package and must find it light.
"""
