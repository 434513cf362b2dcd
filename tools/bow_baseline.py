"""Bag-of-words logistic regression on the same split and vocabulary as a seqgraph spec: the
baseline beside the sentiment models in the README.

    python tools/bow_baseline.py specs/sentiment_bilstm.yaml --data ../shared/data/rt_polarity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgraph.train.loop import prepare  # noqa: E402


def features(xs: list, vocab_size: int) -> np.ndarray:
    """Binary bag of words (ids 0 and 1, <pad> and <unk>, are dropped)."""
    out = np.zeros((len(xs), vocab_size))
    for i, ids in enumerate(xs):
        out[i, ids[ids > 1]] = 1.0
    return out


def fit(X, y, classes, l2=1e-3, lr=0.5, epochs=300):
    """Multinomial logistic regression by full-batch gradient descent."""
    W, b = np.zeros((X.shape[1], classes)), np.zeros(classes)
    hot = np.eye(classes)[y]
    for _ in range(epochs):
        logits = X @ W + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - hot) / len(X)
        W -= lr * (X.T @ g + l2 * W)
        b -= lr * g.sum(0)
    return W, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--data")
    args = parser.parse_args()
    spec, data, _ = prepare(args.spec, args.data)
    V, C = len(data.vocab), len(data.labels)
    W, b = fit(features(data.x, V), np.array(data.y), C)
    for name, xs, ys in (("valid", data.valid_x, data.valid_y), ("test", data.test_x, data.test_y)):
        if xs:
            guess = np.argmax(features(xs, V) @ W + b, axis=1)
            print(f"{name}: accuracy {np.mean(guess == np.array(ys)):.4f} on {len(xs)} examples")


if __name__ == "__main__":
    main()
