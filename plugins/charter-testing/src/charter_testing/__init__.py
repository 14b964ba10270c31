"""Test helpers for charter and its plugins, a distribution of their own (not in the `charter` wheel).

``charter_testing.fake_openai`` provides :class:`~charter_testing.fake_openai.FakeOpenAIServer`, a small,
fast, real OpenAI-compatible HTTP server (chat and legacy completions, log-probabilities, fault injection)
for exercising LiteLLM-based code, charter's own or a plugin's, without any network access.
``charter_testing.tokenization`` tokenizes its replies with a real BPE trained in memory.
"""
