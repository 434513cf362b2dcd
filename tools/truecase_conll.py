"""Make a CoNLL-style tagging file from plain English text: truecasing (Lita et al. 2003,
"tRuEcasIng"), the task of restoring the case of lower-cased text, one tag per token.

    python tools/truecase_conll.py ../shared/data/tinyshakespeare/input.txt -o /tmp/truecase.conll
    seqgraph run specs/truecase_tagger.yaml --data /tmp/truecase.conll

Each non-empty line of the text is one sequence; each word (letters with inner apostrophes:
"know't", "we'll") or punctuation mark is one token, written lower-cased, with its tag:
`lower`, `Cap` (first letter upper, rest lower: "Marcius", "I"), `UPPER` (two or more letters,
all upper), `mixed` (anything else with letters), `-` (no letters). The case is what the tagger
must recover, so the input carries none of it.

It also prints two baselines on the split `specs/truecase_tagger.yaml` uses (`split: mod10`:
line i is train when i % 10 < 8, test when 9): every token `lower`/`-`, and each test word's most
frequent training tag (unseen words: `lower`). The file is made, not shipped: the text's licence
is the text's, and the project never copies data in.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[^\sA-Za-z]")


def case_tag(token: str) -> str:
    letters = [c for c in token if c.isalpha()]
    if not letters:
        return "-"
    if all(c.islower() for c in letters):
        return "lower"
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return "Cap"
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "UPPER"
    return "mixed"


def sequences(text: str) -> list[list[tuple[str, str]]]:
    """(lower-cased token, case tag) per token, one list per non-empty line."""
    return [
        [(token.lower(), case_tag(token)) for token in TOKEN.findall(line)]
        for line in text.splitlines()
        if TOKEN.search(line)
    ]


def baselines(seqs: list[list[tuple[str, str]]]) -> dict[str, float]:
    """Token accuracy and Cap F1 of two baselines on the mod10 test split."""
    train = [s for i, s in enumerate(seqs) if i % 10 < 8]
    test = [pair for i, s in enumerate(seqs) if i % 10 == 9 for pair in s]
    counts: dict[str, Counter] = defaultdict(Counter)
    for token, tag in (pair for s in train for pair in s):
        counts[token][tag] += 1

    def lower_or_none(token: str) -> str:
        return "-" if case_tag(token) == "-" else "lower"

    def majority(token: str) -> str:
        return counts[token].most_common(1)[0][0] if token in counts else lower_or_none(token)

    out = {}
    for name, guess in (("all_lower", lower_or_none), ("word_majority", majority)):
        predicted = [guess(token) for token, _ in test]
        truth = [tag for _, tag in test]
        hits = sum(p == t for p, t in zip(predicted, truth))
        tp = sum(p == t == "Cap" for p, t in zip(predicted, truth))
        precision = tp / max(1, predicted.count("Cap"))
        recall = tp / max(1, truth.count("Cap"))
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        out[f"{name}_accuracy"] = hits / len(test)
        out[f"{name}_cap_f1"] = f1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", type=Path, help="a plain-text file (e.g. Tiny Shakespeare)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the .conll file to write")
    args = parser.parse_args(argv)
    try:
        text = args.text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"{args.text}: cannot read ({error}); pass a UTF-8 text file", file=sys.stderr)
        return 2
    seqs = sequences(text)
    body = "\n\n".join("\n".join(f"{tok}\t{tag}" for tok, tag in s) for s in seqs) + "\n"
    try:
        args.out.write_text(body, encoding="utf-8")
    except OSError as error:
        print(f"{args.out}: cannot write ({error}); choose another -o path", file=sys.stderr)
        return 2
    tags = Counter(tag for s in seqs for _, tag in s)
    print(f"{args.out}: {len(seqs)} sequences, {sum(tags.values())} tokens, tags {dict(tags)}")
    for name, value in baselines(seqs).items():
        print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
