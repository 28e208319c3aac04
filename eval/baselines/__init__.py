"""Reference baselines judged under the same protocol as the generative model.

``popular`` (most-popular titles) is the floor; ``sasrec`` (the paper's sampled-BCE SASRec) is the
usual published comparison; ``sasrec-ce`` (SASRec with a full-catalog softmax) is the strong bar.
"""

from eval.baselines.run import BASELINES, run_baseline

__all__ = ["BASELINES", "run_baseline"]
