"""Test helpers shipped with charter.

``charter.testing.fake_openai`` provides :class:`~charter.testing.fake_openai.FakeOpenAIServer`, a small,
fast, real OpenAI-compatible HTTP server (chat and legacy completions, log-probabilities, fault injection)
for exercising LiteLLM-based code, charter's own or a plugin's, without any network access.
"""
