"""The fixed speed reference every benchmark reports its figures against.

Machines of the same kind differ by 2-3x in absolute speed, so each figure is also given as a
ratio to this reference, measured in the same run: a torchvision ResNet-50 forward (random
weights, eval mode, ``torch.inference_mode``) on one 1 x 3 x 1024 x 1024 image, the same thread
count, median of 3 after a warm-up. Benchmarks measure it before and after their own work and
use the mean of the two medians (``Reference.ms``); the two readings are printed as well, so a
drift during the run shows.

>>> ref = Reference.measure(threads=2)          # doctest: +SKIP
>>> ref.ratio(4900.0)                           # doctest: +SKIP
3.9
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


def resnet50_ms(threads: int | None = None, device: str = "cpu", repeats: int = 3) -> float:
    """Median latency (ms) of the reference forward, after one warm-up."""
    import torch
    import torchvision

    if threads:
        torch.set_num_threads(threads)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.randn(1, 3, 1024, 1024, device=device)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


@dataclass
class Reference:
    """Reference readings of one run: before, and (after :meth:`again`) after the work."""

    threads: int | None = None
    device: str = "cpu"
    readings: list[float] = field(default_factory=list)

    @classmethod
    def measure(cls, threads: int | None = None, device: str = "cpu") -> Reference:
        ref = cls(threads, device)
        ref.again()
        return ref

    def again(self) -> float:
        ms = resnet50_ms(self.threads, self.device)
        self.readings.append(ms)
        return ms

    @property
    def ms(self) -> float:
        return statistics.mean(self.readings)

    def ratio(self, ms: float) -> float:
        """``ms`` in units of the reference forward."""
        return ms / self.ms

    def describe(self) -> str:
        shown = " / ".join(f"{v:.0f}" for v in self.readings)
        return (f"reference: torchvision ResNet-50 forward, 1x3x1024x1024, {self.device}, "
                f"{self.threads or 'default'} thread(s): {self.ms:.0f} ms "
                f"(readings before / after: {shown} ms)")


def append_results(path, table: str) -> None:
    """Append ``table`` to a results file (``--markdown``) under a heading naming the day and
    the command line that measured it."""
    import sys
    from pathlib import Path

    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    with Path(path).open("a") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d')}: `{command}`\n\n{table}")
