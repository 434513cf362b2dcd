"""The built-in applications: each module owns one task's data source(s), with their own
options schema, and whatever the task adds to the loss (scores, files, a score line).

Importing this package registers them (`register`) in `seqgraph.spec.registry`; the layers
above apps (`api_runs`, `api`, `cli`) import it before looking a source up, so the built-ins
are found without reinstalling the package. The same `register` is the built-ins' entry point
in the group `seqgraph.apps` (pyproject.toml); registering twice changes nothing.

- `sentences`: `tsv`, `labelled_lines` (sentence classification: tokens, vocabulary, splits)
- `synthetic`: `adding`, `copy`, `sine` (generated toy tasks)
- `fsdd`: spoken digits as phonemes for CTC (scored, like every CTC model, by `train.ctc`)
- `mulaw`: `mulaw_audio` (a waveform as μ-law ids; bits per sample, a generated WAV)
- `activity`: `activity_video` (generated clips, per-class recall)
- `frames`: `bouncing_frames` (future-frame prediction, per-frame MSE, a PNG strip)
- `captions`: `shape_captions` (image captioning, BLEU, example captions)
- `conll`: `conll` (CoNLL-style per-token tagging: `token<TAB>tag`, blank line between)
- `parallel`: `parallel` (`source<TAB>target` pairs for seq2seq, separate vocabularies)
- `dates`: `dates` (human date formats -> ISO, generated, held out by date)

Never imported by the core: the core (train, spec, cli) names no application.
"""

from __future__ import annotations

from seqgraph.apps import (
    activity,
    captions,
    conll,
    dates,
    frames,
    fsdd,
    mulaw,
    parallel,
    sentences,
    synthetic,
)
from seqgraph.spec import registry

BUILTIN = {
    "sentences": sentences,
    "synthetic": synthetic,
    "fsdd": fsdd,
    "mulaw": mulaw,
    "activity": activity,
    "frames": frames,
    "captions": captions,
    "conll": conll,
    "parallel": parallel,
    "dates": dates,
}


def register() -> None:
    """Register every built-in application's data sources (idempotent)."""
    for name, module in BUILTIN.items():
        registry.register_app(name, module.SOURCES)


register()
