"""sidrec: generative retrieval over semantic IDs.

The pipeline, one package per stage: ``semantic_ids`` -> ``gen_fm`` -> ``prompt_tuning`` ->
``serving``, judged by ``eval``. This package holds what every stage shares: data loading
(``sidrec.data``), member sequences (``sidrec.sequences``), artifacts (``sidrec.artifacts``) and the
``sidrec`` command line (``sidrec.cli``).
"""

__version__ = "0.1.0"
