"""Shared fixtures: the fake OpenAI-compatible server, and a Ganglion app built on real parts."""

from __future__ import annotations

from fake_llm import fake_llm, fake_llm_factory  # noqa: F401  (fixtures)
