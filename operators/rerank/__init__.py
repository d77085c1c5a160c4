"""MaTIR's second stage as pure model code: a multimodal LLM judges each candidate image for the query
(yes/no and boxes), replies are parsed without trusting them, and boxes are matched to stored regions.

Backends (all behind `Reranker`): a local transformers Qwen2.5-VL (qwen.py), an OpenAI-compatible
chat-completions server (openai_client.py), and a random-weight tiny Qwen2.5-VL for tests (tiny.py).
Building them from weight files is operators/registry/rerankers.py's job.
"""
