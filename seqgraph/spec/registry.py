"""The registry of data sources: how applications plug into seqgraph without the core naming
them.

A data source is one value of a spec's `data.source`. Its record (`DataSource`) holds:
- `options`: the JSON Schema `properties` of the options it reads (`data.<option>`). The spec's
  schema is built from these records (`schema.spec_schema`), so each source validates its own
  options and a key another source reads is refused;
- `load(config, pattern, seed)`: the data set (a `train.data.Stream` or `SequenceSet`);
- what an application adds to the plain loss: `scorer()` (a per-batch accumulator whose scores
  join the validation result), `metrics(model, dataset, split, batch_size)` (its own scores,
  reported under `app`), `artifacts(model, dataset, run_dir, seed)` (files it writes, {name:
  path}), `score_line(result)` (the text `run` and `eval` print after the loss) and
  `sample(model, run_dir, out, prime=, length=, temperature=, greedy=, seed=)` (what
  `seqgraph sample` makes instead of text: a file, e.g. a WAV; returns its path).
- what `seqgraph predict` needs to read raw input (both optional; a source without `encode`
  predicts from arrays only): `encode(texts, config, facts, pattern)` turns raw strings into
  model inputs with the run's own tokenizer and vocabulary (`config`: the run's `data:`
  section; `facts`: its data.json) and returns `Encoded`; `read_inputs(path, config)` gives
  the raw input strings of a data file in the source's format, labels dropped (default: its
  non-blank lines).

An application registers its sources with one call, `register_app(name, sources)`. The
built-in ones do so when `seqgraph.apps` is imported (the layers above apps import it); a
third-party package adds an entry point to the group `seqgraph.apps` that names a function of
no arguments which makes that call:

    [project.entry-points."seqgraph.apps"]
    my_app = "my_package.seqgraph_app:register"

The registry lives in `spec/` because the spec's schema reads it, and `spec` is the lowest
stage that needs it: it imports nothing of seqgraph but `errors`, and holds the callables it is
given without knowing what they return. Registering is idempotent by name: an application that
registers again replaces its own sources; a source name another application owns is refused.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import jsonschema

from seqgraph.errors import DataError, SeqgraphError

ENTRY_POINT_GROUP = "seqgraph.apps"


class Scorer(Protocol):
    """Scores accumulated over the batches of one evaluation (e.g. greedy-decoded CTC)."""

    def add(self, batch: dict, out: dict) -> None: ...

    def result(self) -> dict: ...


@dataclass(frozen=True)
class Encoded:
    """Raw inputs as a model reads them: `ids` (one int64 array per input), `tokens` (the
    tokens each id stands for, aligned with them) and `unknown` (how many tokens were not in
    the vocabulary: mapped to its unknown id, or dropped when it has none)."""

    ids: list
    tokens: list[list[str]]
    unknown: int = 0
    unknown_to: str = "<unk>"  # what an unknown token became ("dropped" if it was dropped)


@dataclass(frozen=True)
class DataSource:
    """One `data.source` value; see the module docstring for each field."""

    name: str
    load: Callable[[dict, str, int], Any]
    options: dict = field(default_factory=dict)
    description: str = ""
    suffixes: dict = field(default_factory=dict)  # --data FILE.suffix picks this source
    folder_option: str = "path"  # the option a --data FOLDER sets
    scorer: Callable[[], Scorer] | None = None
    metrics: Callable[..., dict] | None = None
    artifacts: Callable[..., dict] | None = None
    score_line: Callable[[dict], str] | None = None
    sample: Callable[..., Any] | None = None
    encode: Callable[[list[str], dict, dict, str], Encoded] | None = None
    read_inputs: Callable[[Any, dict], list[str]] | None = None
    app: str = ""  # the application that registered it (filled in by `register_app`)


_SOURCES: dict[str, DataSource] = {}
_discovered = False


def register_app(name: str, sources: Iterable[DataSource]) -> None:
    """Register application `name` and its data sources (again: replace its own)."""
    sources = list(sources)
    for source in sources:
        _check_options(name, source)
        owner = _SOURCES.get(source.name)
        if owner is not None and owner.app != name:
            raise SeqgraphError(
                f"data source {source.name!r} is registered by application {owner.app!r} "
                f"already; application {name!r} must name its source differently"
            )
    for old in [key for key, record in _SOURCES.items() if record.app == name]:
        del _SOURCES[old]
    for source in sources:
        _SOURCES[source.name] = replace(source, app=name)


def _check_options(app: str, source: DataSource) -> None:
    """A plugin author learns at registration, not at the first spec, that its schema is off."""
    where = f"application {app!r}, data source {source.name!r}"
    if "source" in source.options:
        raise SeqgraphError(f"{where}: `source` is not an option; leave it out of `options`")
    try:
        jsonschema.Draft202012Validator.check_schema({"properties": source.options})
    except jsonschema.SchemaError as exc:
        raise SeqgraphError(f"{where}: its options are not JSON Schema ({exc.message})") from None


def unregister_app(name: str) -> None:
    """Remove application `name` and its sources (tests register apps for a while)."""
    for old in [key for key, record in _SOURCES.items() if record.app == name]:
        del _SOURCES[old]


def discover() -> list[str]:
    """Load every entry point of the group `seqgraph.apps` and call what it names; returns
    their names. A plugin that fails to load is skipped with a warning."""
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()()
        except Exception as exc:  # a broken plugin must not stop every other run
            warnings.warn(
                f"seqgraph plugin {entry.name!r} ({entry.value}) failed to register: {exc}",
                stacklevel=2,
            )
            continue
        found.append(entry.name)
    return found


def sources() -> dict[str, DataSource]:
    """Every registered data source by name (plugins are discovered on the first call)."""
    global _discovered
    if not _discovered:
        _discovered = True
        discover()
    return dict(_SOURCES)


def source(name: str) -> DataSource:
    """The record of data source `name`; DataError lists the known ones."""
    known = sources()
    if name not in known:
        raise DataError(f"data.source {name!r} is unknown; use one of {', '.join(known)}")
    return known[name]
