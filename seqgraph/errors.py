"""The exceptions users see. Each message is one line that says what is wrong and how to fix it."""

from __future__ import annotations


def one_line(text: str) -> str:
    """Errors print as one line, even when they quote a key or value holding newlines."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class SeqgraphError(Exception):
    """Base of every error seqgraph raises on purpose."""


class SpecError(SeqgraphError):
    """A spec is invalid. Carries the YAML path (`model.layers[1].hidden`) and the line."""

    def __init__(self, path: str, message: str, line: int | None = None, source: str = ""):
        self.path, self.message, self.line, self.source = path, message, line, source
        where = source or "spec"
        if line is not None:
            where += f":{line}"
        super().__init__(one_line(f"{where}: {path or '<root>'}: {message}"))


class GraphError(SeqgraphError):
    """The unrolled graph is malformed, or an op failed while evaluating it."""


class MissingVJPError(GraphError):
    """An op has no gradient for one of its inputs but the loss depends on that input."""

    def __init__(self, op: str, position: int, node: object):
        super().__init__(
            f"op '{op}' has no VJP for input {position} (node {node}); "
            "that input must not depend on a parameter"
        )


class DataError(SeqgraphError):
    """A batch or data file does not fit the spec."""


class BackendError(SeqgraphError):
    """The requested array backend or dtype cannot be used here."""


class RunFolderError(DataError):
    """A run folder cannot be written, locked or read back; names the file and the fix."""
