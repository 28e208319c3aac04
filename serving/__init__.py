"""Serving: the Python API (``serving.recommender.Recommender``) over a vLLM or transformers backend.

vLLM is imported only inside ``serving.engine``'s functions, so this package imports without it.
"""
