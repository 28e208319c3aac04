"""The recipes: the data rule for depth and dropouts, on both kinds of data and both kinds of history."""

from __future__ import annotations

from gen_fm.recipes import (
    DATA_SHAPE_FIELDS,
    DENSE_SHAPE,
    SPARSE_CODE_SHAPE,
    SPARSE_EVENTS_PER_MEMBER,
    SPARSE_TITLE_SHAPE,
    shape_for_data,
)


def test_the_data_rule_splits_sparse_from_dense_members_and_title_from_code_histories():
    sparse, dense = SPARSE_EVENTS_PER_MEMBER - 1, SPARSE_EVENTS_PER_MEMBER
    assert shape_for_data(sparse, "titles") == SPARSE_TITLE_SHAPE
    assert shape_for_data(sparse, "codes") == SPARSE_CODE_SHAPE
    assert shape_for_data(dense, "titles") == shape_for_data(dense, "codes") == DENSE_SHAPE
    # sparse title-token histories: SASRec's depth and dropouts, the hidden dropout on the trunk
    assert SPARSE_TITLE_SHAPE == dict(
        num_layers=2, dropout=0.5, hidden_dropout=0.5, hidden_dropout_on="trunk"
    )
    assert SPARSE_CODE_SHAPE["hidden_dropout"] > DENSE_SHAPE["hidden_dropout"] == 0.0

    # every shape sets every field the config may leave to the data, and nothing else
    for shape in (DENSE_SHAPE, SPARSE_TITLE_SHAPE, SPARSE_CODE_SHAPE):
        assert set(shape) == set(DATA_SHAPE_FIELDS)
