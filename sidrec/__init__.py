"""sidrec: generative retrieval over semantic IDs.

The pipeline, one package per stage: ``semantic_ids`` -> ``gen_fm`` -> ``prompt_tuning`` ->
``serving``, judged by ``eval``. This package holds what every stage shares (the ground floor: data
loading ``sidrec.data``, member sequences ``sidrec.sequences``, artifacts ``sidrec.artifacts``, rank
metrics ``sidrec.metrics``, config overrides ``sidrec.overrides``; none imports a stage) and what a
person runs (the top floor: ``sidrec.cli``, the quickstart ``sidrec.pipeline``, ``sidrec.refresh``).
``tests/test_layers.py`` keeps the floors apart.
"""

__version__ = "0.1.0"
