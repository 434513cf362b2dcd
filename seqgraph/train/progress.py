"""Training progress: a tqdm bar on a terminal, plain log lines otherwise (CI, files)."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Shows step, loss per token, tokens/s, clip rate and ETA."""

    def __init__(self, total: int, start: int, bar: bool | None, log, every: int = 50):
        self.total, self.start, self.log, self.every = total, start, log, every
        self.began = time.perf_counter()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, step: int, loss: float, rate: float, clip_rate: float, lr: float) -> None:
        done = step - self.start
        eta = (time.perf_counter() - self.began) / max(done, 1) * (self.total - step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", clip=f"{clip_rate:.0%}")
        elif step % self.every == 0 or step == self.total:
            self.log(
                f"step {step}/{self.total}  loss {loss:.4f}  {rate:,.0f} tok/s  "
                f"clip {clip_rate:.0%}  lr {lr:.2e}  eta {_duration(eta)}"
            )

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
