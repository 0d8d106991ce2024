"""What a model costs: parameters, bytes on disk, FLOPs, latency and throughput.

Every compression lesson reports its result with these same functions, so the cost ledger
of lesson 08 compares like with like.
"""
import io
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch


def count_parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk(model):
    """Bytes of the model's state_dict as ``torch.save`` writes it (what a deployment ships)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_flops(model, *inputs, backward=False):
    """FLOPs of one forward pass (plus its backward pass with ``backward=True``), counted by
    ``torch.utils.flop_counter``. One multiply-add counts as two FLOPs. Returns
    (total, {module name: flops}) for the top-level children of ``model``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = model(*inputs)
        if backward:
            out.float().sum().backward()
    per_module = {name.split(".", 1)[-1]: sum(counts.values())
                  for name, counts in counter.get_flop_counts().items()
                  if name.count(".") == 1}
    return counter.get_total_flops(), per_module


def confusion_matrix(predictions, labels, num_classes=10):
    """(true class, predicted class) counts as a (num_classes, num_classes) int64 tensor."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion):
    """Recall of each class: the diagonal over the row sums."""
    return confusion.diag().double() / confusion.sum(1).clamp(min=1).double()


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    batch_size: int

    @property
    def throughput(self):
        """Items per second at the median time."""
        return self.batch_size / (self.median_ms / 1000)

    def __str__(self):
        return (f"{self.median_ms:.2f} ms median (min {self.min_ms:.2f}) for batch {self.batch_size}: "
                f"{self.throughput:,.0f} items/s")


def measure_latency(fn, batch_size, warmup=3, repeats=10):
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls; report the median.

    The warm-up absorbs one-off costs (memory allocation, kernel selection); the median
    ignores the occasional slow call caused by something else on the machine.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return Timing(statistics.median(times), min(times), batch_size)


def inference_latency(model, batch_size=1, warmup=3, repeats=10, image_size=32):
    """Latency of ``model`` on a random (batch_size, 3, H, W) batch, in eval mode, no grad."""
    model.eval()
    x = torch.rand(batch_size, 3, image_size, image_size,
                   device=next(model.parameters()).device)

    def run():
        with torch.inference_mode():
            model(x)

    return measure_latency(run, batch_size, warmup, repeats)


def machine_info():
    """A one-line description of the machine, for provenance and benchmark tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")
