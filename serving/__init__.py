"""Serving: the Python API (``serving.recommender.Recommender``) over a vLLM or transformers backend,
per-request business rules (``serving.rules``) and the HTTP server (``serving.server``).

vLLM is imported only inside ``serving.engine``'s functions, so this package imports without it.
"""
