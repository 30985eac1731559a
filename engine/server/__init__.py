"""The OpenAI-compatible server over LLMEngine: `engine serve MODEL`."""
