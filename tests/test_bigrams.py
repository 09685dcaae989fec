"""dataset.num_bins: hashed bigram columns after the words in the IMDB multi-hot rows."""

from __future__ import annotations

import numpy as np

from conftest import compose, write_imdb
from src.data import datasets as data


def test_words_only_is_unchanged_and_bigrams_add_hashed_columns(tmp_path):
    path = write_imdb(tmp_path / "imdb.npz")
    raw = data.read_npz(path)
    cfg = compose(["model=imdb_dense", "dataset.num_words=1000"]).dataset
    words_only = data.word_index_rows(raw, cfg)
    cfg.num_bins = 64
    with_bigrams = data.word_index_rows(raw, cfg)
    raw_train = raw["x_train"]
    for split in ("train", "test"):
        splits0, words0, labels0 = words_only[split]
        splits2, words2, labels2 = with_bigrams[split]
        np.testing.assert_array_equal(labels0, labels2)
        for row in range(5):
            plain = words0[splits0[row] : splits0[row + 1]]
            both = words2[splits2[row] : splits2[row + 1]]
            np.testing.assert_array_equal(both[both < 1000], plain)  # the word columns are as before
            bigrams = both[both >= 1000]
            assert len(bigrams) > 0 and bigrams.max() < 1000 + 64
            assert len(np.unique(both)) == len(both)  # multi-hot: each column once
    # the same review with its words in another order sets other bigram columns, the same word columns
    review = np.asarray(raw_train[0], dtype=np.int64) + cfg.index_from
    rows = np.zeros(len(review), dtype=np.int64)
    forward = data._with_bigrams(rows, review, review, 100_000, 1 << 16)[1][len(review):]
    backward = data._with_bigrams(rows, review[::-1], review[::-1], 100_000, 1 << 16)[1][len(review):]
    assert set(forward) != set(backward)
