"""The run folder: resolved spec, data facts, checkpoints (written atomically), metrics.

RUN_DIR/spec.yaml        the spec as run (vocab sizes and data path filled in)
RUN_DIR/data.json        vocabulary, labels and split sizes
RUN_DIR/checkpoint.npz   parameters, optimizer state, carried state, step, RNG state, and the
                         best-validation and early-stopping counters (`train.best`); with
                         `train.ema` its parameters are the averaged ones and `raw/` holds
                         the ones training goes on from (`train.ema`)
RUN_DIR/best.npz         the parameters at the best validation so far (same format, no
                         optimizer state or carried state); `--checkpoint best|last` picks
RUN_DIR/metrics.jsonl    one JSON object per logged step or validation
RUN_DIR/loss.png         the loss curves, drawn at the end
RUN_DIR/machine.json     system, Python and NumPy versions and cores of the training machine
RUN_DIR/.lock            held (flock) by the `seqgraph run` writing the folder; holds its PID

Every file is replaced atomically (temporary file, fsync, rename) with the user's umask, so a
kill or a full disk leaves the previous version; a failed write raises `RunFolderError`, one
line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import yaml

from seqgraph.errors import DataError, RunFolderError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
CHECKPOINT_CHOICES = {"best": BEST, "last": CHECKPOINT}
LOCK = ".lock"

_NEW_OUT = "pass --out DIR"
_FIXES = {  # errno: what to do about a write that failed with it
    errno.EACCES: f"no permission to write there; {_NEW_OUT} with a folder you can write",
    errno.EPERM: f"no permission to write there; {_NEW_OUT} with a folder you can write",
    errno.EROFS: f"the file system is read-only; {_NEW_OUT} on a writable disk",
    errno.ENOSPC: "the disk is full; free some space and continue with --resume, "
    f"or {_NEW_OUT} on another disk",
    errno.EDQUOT: "the disk quota is used up; free some space and continue with --resume, "
    f"or {_NEW_OUT} on another disk",
    errno.ENOTDIR: f"part of the path is a file, not a folder; {_NEW_OUT} with a folder path",
    errno.EEXIST: f"a file is in the way of a folder; {_NEW_OUT} with a folder path",
    errno.ENAMETOOLONG: f"the name is too long; {_NEW_OUT} with a shorter path",
}


def write_error(
    path: Path, exc: OSError, replacing: bool = True, option: str = _NEW_OUT
) -> RunFolderError:
    """One line for a write to `path` that failed: the reason (errno) and the fix, and, for a
    file being replaced atomically, that its previous version is unchanged. `option` is how
    the user names another place (a run folder's `pass --out DIR`, a report's `pass -o FILE`)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    fix = _FIXES.get(exc.errno, f"{_NEW_OUT} with a folder you can write")
    fix = fix.replace(_NEW_OUT, option).replace("FILE with a folder", "FILE in a folder")
    kept = f"; the previous {path.name} is unchanged" if replacing and path.is_file() else ""
    return RunFolderError(f"{path}: cannot write ({reason}){kept}; {fix}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write, option: str = _NEW_OUT) -> None:
    """Write through a temporary file in the same folder, then rename over `path`, so a crash
    at any point leaves either the old file or the new one, never a torn one. The file gets
    the mode a plain `open` would give it (0666 less the umask), not mkstemp's 0600. A failed
    write is one line whose fix names `option` (see `write_error`)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc, option=option) from None
        raise


def make_folder(run_dir: Path) -> None:
    """Create the run folder (and its parents); RunFolderError if that cannot be done."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(
            f"{run_dir}: is a file, not a folder; {_NEW_OUT} with a folder path (new or a run's)"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run_dir, exc) from None


@contextlib.contextmanager
def locked(run_dir: Path):
    """Create the run folder and hold an exclusive lock on it (flock on RUN_DIR/.lock) while
    the block runs, so two `seqgraph run` never write one folder; the lock file holds the
    holder's PID, for the message the second one prints. The lock ends with the process."""
    run_dir = Path(run_dir)
    make_folder(run_dir)
    if fcntl is None:
        yield
        return
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (PID {holder})" if holder.isdigit() else ""
            raise RunFolderError(
                f"{run_dir}: another `seqgraph run` is writing this folder{who}; wait for it "
                f"to finish, or {_NEW_OUT} for a new run"
            ) from None
        except OSError:  # this file system has no locks (some NFS): run unlocked
            held = False
        if held:
            with contextlib.suppress(OSError):  # the PID is a courtesy; the lock is what counts
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_checkpoint(
    run_dir: Path,
    params: dict,
    opt_state: dict,
    carry: dict,
    meta: dict,
    name: str = CHECKPOINT,
    raw: dict | None = None,
) -> None:
    """Everything a resumed run needs, as host arrays plus a JSON `meta` string; `name`
    BEST writes the best parameters the same way. `raw`: the parameters training goes on
    from, when `params` are others (their average, `train.ema`)."""
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"raw/{k}": v for k, v in (raw or {}).items()})
    for param, slots in opt_state.items():
        arrays.update({f"opt/{param}/{slot}": v for slot, v in slots.items()})
    arrays.update({f"carry/{k}": v for k, v in carry.items()})
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(Path(run_dir) / name, lambda handle: np.savez(handle, **arrays))


def _unreadable(path: Path, reason: str) -> RunFolderError:
    # Never suggest allow_pickle: a checkpoint holds plain arrays, and pickle runs code.
    return RunFolderError(
        f"{path}: not a readable checkpoint ({reason}); it was cut short or is not a seqgraph "
        f"checkpoint: restore it from a copy, or train again with --out DIR"
    )


def require_checkpoint(run_dir: Path) -> Path:
    """The checkpoint's path; DataError if the folder has none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise DataError(
            f"{path}: no checkpoint; train first with `seqgraph run SPEC --out {run_dir}`"
        )
    return path


def checkpoint_name(run_dir: Path, which: str | None) -> str:
    """The file `which` ("best", "last" or None: best when the run has one, else last) names
    in a run folder; DataError for another value, or "best" where the run has none."""
    if which is None:
        return BEST if (Path(run_dir) / BEST).is_file() else CHECKPOINT
    if which not in CHECKPOINT_CHOICES:
        raise DataError(f"checkpoint {which!r} is not one of best, last; use best or last")
    name = CHECKPOINT_CHOICES[which]
    if name == BEST and not (Path(run_dir) / BEST).is_file():
        raise DataError(
            f"{Path(run_dir) / BEST}: no best checkpoint (a run writes it when a validation "
            "score improves; this one had no validation data or predates best.npz); "
            "use the last one: --checkpoint last"
        )
    return name


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT) -> tuple[dict, dict, dict, dict]:
    """(params, optimizer state, carried state, meta) from a run folder's `name`
    (checkpoint.npz, or best.npz): the parameters a model is evaluated with."""
    params, _, opt_state, carry, meta = load_training_state(run_dir, name)
    return params, opt_state, carry, meta


def load_training_state(
    run_dir: Path, name: str = CHECKPOINT
) -> tuple[dict, dict, dict, dict, dict]:
    """(params, raw params, optimizer state, carried state, meta): `load_checkpoint` plus the
    parameters training goes on from where they differ from `params` ({} where they do not:
    a run without `train.ema`)."""
    path = require_checkpoint(run_dir) if name == CHECKPOINT else Path(run_dir) / name
    try:
        stored = np.load(path, allow_pickle=False)
        if not hasattr(stored, "files"):  # a plain array: an .npy, not an .npz
            raise _unreadable(path, "a single array, not an .npz archive")
        with stored:
            arrays = {k: stored[k] for k in stored.files}
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _unreadable(path, f"a damaged zip archive: {exc}") from None
    except (OSError, ValueError):  # numpy's text here suggests unpickling: never repeat it
        raise _unreadable(path, "not an .npz archive") from None
    try:
        meta = json.loads(str(arrays["meta"]))
        meta["step"], meta["optimizer_steps"], meta["rng"]  # noqa: B018
    except KeyError as exc:
        raise _unreadable(path, f"no {exc} entry in its metadata") from None
    except (ValueError, TypeError):
        raise _unreadable(path, "its metadata is not JSON") from None
    params, raw, opt_state, carry = {}, {}, {}, {}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "param":
            params[rest] = value
        elif kind == "raw":
            raw[rest] = value
        elif kind == "opt":
            name, _, slot = rest.rpartition("/")
            opt_state.setdefault(name, {})[slot] = value
        elif kind == "carry":
            carry[rest] = value
    return params, raw, opt_state, carry, meta


def check_finite(run_dir: Path, params: dict, name: str = CHECKPOINT) -> None:
    """Refuse parameters holding NaN or Inf: every output of such a model is NaN."""
    bad = sorted(k for k, v in params.items() if v.dtype.kind in "fc" and not np.isfinite(v).all())
    if bad:
        raise RunFolderError(
            f"{Path(run_dir) / name}: parameter(s) {', '.join(map(repr, bad[:3]))} hold "
            "NaN or Inf (the run diverged); restore an earlier copy, or train again with a "
            "lower train.lr or with train.clip"
        )


def write_run_files(run_dir: Path, raw_spec: dict, data_facts: dict) -> None:
    make_folder(run_dir)
    text = yaml.safe_dump(raw_spec, sort_keys=False).encode()
    atomic_write(run_dir / "spec.yaml", lambda handle: handle.write(text))
    facts = json.dumps(data_facts, indent=1).encode()
    atomic_write(run_dir / "data.json", lambda handle: handle.write(facts))
    machine = json.dumps(machine_facts(), indent=1).encode()
    atomic_write(run_dir / "machine.json", lambda handle: handle.write(machine))


def machine_facts() -> dict:
    """The machine a run trains on (for `seqgraph report`): system, Python, NumPy, cores."""
    import platform

    return {
        "system": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _restore_hint(run_dir: Path) -> str:
    return f"restore it from a copy, or train again with `seqgraph run SPEC --out {run_dir}`"


def read_data_facts(run_dir: Path) -> dict:
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        raise DataError(
            f"{run_dir}: not a run folder (no data.json); pass the --out folder of a `seqgraph run`"
        )
    try:
        facts = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise RunFolderError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); {_restore_hint(run_dir)}"
        ) from None
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: not UTF-8 text; {_restore_hint(run_dir)}") from None
    if not isinstance(facts, dict) or "kind" not in facts:
        raise RunFolderError(
            f"{path}: not the data facts of a run (no 'kind'); {_restore_hint(run_dir)}"
        )
    return facts


def read_run_spec(run_dir: Path) -> dict | None:
    """The spec a run folder recorded (spec.yaml), or None if it is missing or unreadable."""
    try:
        raw = yaml.safe_load((Path(run_dir) / "spec.yaml").read_bytes())
    except (OSError, yaml.YAMLError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


TIMED_KINDS = ("train", "valid")  # the records curves are drawn from


class Metrics:
    """metrics.jsonl, truncated on resume to the steps the checkpoint covers. The truncated
    (or, for a new run, empty) file replaces the old one atomically, so a kill at the start
    of a run loses no history; records are then appended."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        text = "".join(line + "\n" for line in kept).encode()
        atomic_write(self.path, lambda handle: handle.write(text))
        self.listeners: list = []  # callables given each record after it is written

    def write(self, record: dict) -> None:
        """Append `record` (a training or validation one stamped with the time, Unix seconds,
        for curves against wall time), then hand it to each listener (trackers, a sweep's
        pruning), which see only what the file already holds."""
        if record.get("kind") in TIMED_KINDS:
            record = {**record, "time": round(time.time(), 3)}
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:  # a torn last line is dropped on resume
            raise write_error(self.path, exc, replacing=False) from None
        for listener in self.listeners:
            listener(record)

    def read(self) -> list[dict]:
        return read_metrics(self.path.parent)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, less a line torn by a kill; DataError if the
    folder has none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir}: no metrics.jsonl; pass the --out folder of a `seqgraph run`")
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line torn by a kill
            out.append(json.loads(line))
    return out


def plot_losses(run_dir: Path, records: list[dict]) -> Path | None:
    """loss.png: training loss per step and validation loss, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    valid = [(r["step"], r["valid_loss"]) for r in records if r.get("kind") == "valid"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (per token)", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation (per token)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "loss.png"
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)
    return path
