"""sidrec: generative retrieval over semantic IDs. This package is the top floor: what a person runs.

The house, read from the folder names:

    sidrec/         top     the command line (one parser), the quickstart, refresh, benchmark commands
    eval/           stage 5 offline metrics, baselines, benchmark bodies, the report
    serving/        stage 4 constrained decoding on vLLM or transformers, the HTTP server, batch lists
    prompt_tuning/  stage 3 soft prompts per canvas (PEFT)
    gen_fm/         stage 2 the foundation model over semantic-ID sequences
    semantic_ids/   stage 1 title embeddings -> quantizer -> unique code tuples
    core/           ground  data, sequences, artifacts, metrics, config overrides, logs

Each floor imports only the floors below it (a stage only the stages to its left); vLLM is imported
only inside ``serving/``. ``tests/test_layers.py`` reads the imports and keeps this true.
"""

from core import __version__

__all__ = ["__version__"]
