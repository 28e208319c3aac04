"""Serving: the Python API (``serving.recommender.Recommender``) over a decoding backend chosen by
name (``serving.backends``: vLLM, transformers, or one registered there), per-request business rules
(``serving.rules``) and the HTTP server (``serving.server``).

vLLM is imported only inside the functions and classes of ``serving.backends.vllm``, so this
package imports without it.
"""
