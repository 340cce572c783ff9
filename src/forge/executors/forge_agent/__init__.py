"""The built-in agent (executor kind "forge"): Forge's own coding agent for any
OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, OpenAI).

`loop` drives the conversation, `client` streams the model's answers, `tools` are the
workspace tools it may call, `session` stores conversations between runs, `settings` reads the
profile.
"""

from forge.executors.forge_agent.loop import ForgeAgentExecutor

__all__ = ["ForgeAgentExecutor"]
