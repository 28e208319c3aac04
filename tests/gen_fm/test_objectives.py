"""Training-only auxiliary objectives: which positions they judge, their targets, their heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_fm.objectives import AuxiliaryObjectives, category_targets, category_vocabulary
from semantic_ids.layout import TokenLayout

LAYOUT = TokenLayout((4, 4, 2))
CODES = np.array([[0, 1, 0], [3, 2, 1], [1, 1, 1]])  # three titles
CATS = [["Drama", "Crime"], ["Crime"], []]


def test_category_vocabulary_drops_rare_and_universal_labels():
    cats = [["Beauty", "Skin"], ["Beauty", "Skin"], ["Beauty", "Hair"], ["Beauty", "Nails"]]
    assert category_vocabulary(cats, min_titles=2) == ["Skin"]  # Beauty: on every title
    assert category_vocabulary(cats, min_titles=1) == ["Hair", "Nails", "Skin"]


def test_category_targets_share_the_mass_between_a_titles_labels():
    t = category_targets(CATS, ["Crime", "Drama"])
    assert torch.equal(t, torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]))


def heads(mtp_tokens=2):
    return AuxiliaryObjectives(8, LAYOUT, mtp_tokens, CODES, category_targets(CATS, ["Crime", "Drama"]))


def test_category_positions_are_the_predictions_of_a_titles_first_code():
    tok = LAYOUT.sids_to_ids(CODES)
    # context (2 tokens), then titles 0, 1, 2 as targets; title 2 has no label
    labels = torch.tensor(
        [[-100, -100, *tok[0], *tok[1], *tok[2]], [-100, -100, -100, -100, -100, *tok[1], -100, -100, -100]]
    )
    (b, t), rows = heads().category_positions(labels)
    assert b.tolist() == [0, 0, 1] and t.tolist() == [1, 4, 4] and rows.tolist() == [0, 1, 1]
    # a title cut off at the end of a row is not judged
    (b, t), rows = heads().category_positions(labels[:, :7])
    assert t.tolist() == [1] and rows.tolist() == [0]


def test_losses_and_counts():
    tok = LAYOUT.sids_to_ids(CODES)
    labels = torch.tensor([[-100, -100, *tok[0], *tok[1], *tok[2]]])  # (1, 11)
    aux = heads()
    counts = aux.counts(labels)
    assert counts == {"mtp_2": 9, "mtp_3": 8, "category": 2}
    with pytest.raises(RuntimeError, match="attach"):
        aux(labels, torch.randn(LAYOUT.vocab_size, 8))
    aux._hidden = torch.randn(1, 11, 8, requires_grad=True)
    out = aux(labels, torch.randn(LAYOUT.vocab_size, 8))
    assert set(out) == set(counts) and all(v > 0 for v in out.values())
    # a perfect category head: the loss is the entropy of the soft targets, log 2 + 0
    with torch.no_grad():
        aux.category.weight.zero_()
        aux.category.bias.copy_(torch.tensor([0.0, 0.0]))
    aux._hidden = torch.zeros(1, 11, 8)
    loss = aux(labels, torch.randn(LAYOUT.vocab_size, 8))["category"]
    assert loss.item() == pytest.approx(2 * np.log(2))  # both titles judged at a uniform guess
