"""What a model costs, in one record: accuracy, parameters, bytes on disk, FLOPs, latency,
throughput, precision, training cost and the machine.

Every lesson from 02 on reports its models with ``measure_costs`` and shows them with
``cost_table``, so the cost ledger of lesson 08 compares like with like:

    costs = measure_costs({"reference": model, "pruned": pruned}, data)
    cost_table(costs)

Several models are timed side by side in one run: the repeats are interleaved (model A, model
B, model A, ...) with the same thread count, so a slow minute on a shared machine slows them
all and their ratios hold. A column that cannot be measured for a model is left empty and
``Cost.notes`` says why, instead of showing a wrong number.
"""
import io
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


def count_parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk(model):
    """Bytes of the model's state_dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def safetensors_blob(tensors: dict) -> bytes:
    """``tensors`` (name -> tensor) as the bytes of one .safetensors file, without metadata."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_bytes(tensors: dict) -> int:
    """Bytes of ``tensors`` written as one .safetensors file, without metadata."""
    return len(safetensors_blob(tensors))


def safetensors_bytes(model) -> int:
    """Bytes of the model's weights as one .safetensors file (what ``save_model`` writes, less
    its metadata)."""
    return tensors_bytes(model.state_dict())


def count_flops(model, *inputs, backward=False):
    """FLOPs of one forward pass (plus its backward pass with ``backward=True``), counted by
    ``torch.utils.flop_counter``. One multiply-add counts as two FLOPs. Returns
    (total, {module name: flops}) for the top-level children of ``model``."""
    total, per_module = _flop_counts(model, *inputs, backward=backward)
    top = {name.split(".", 1)[1]: n for name, n in per_module.items() if name.count(".") == 1}
    return total, top


def _flop_counts(model, *inputs, backward=False):
    """(total, {fully qualified module name: flops}) with names as ``Root.child.grandchild``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flops())
    with counter:
        out = model(*inputs)
        if backward:
            out.float().sum().backward()
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()
                  if name != "Global"}
    return counter.get_total_flops(), per_module


def _cpu_sdpa_flops():
    """FLOP formulas for the CPU kernels of ``F.scaled_dot_product_attention``, which
    ``torch.utils.flop_counter`` does not count (it knows the GPU kernels only): without them a
    fused ``Attention`` on a CPU would count only its projections. Same formulas as the GPU ones."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(g, q, k, v))
    return mapping


# --- the FLOPs of one block, by formula -------------------------------------------------------

def attention_flops(tokens, dim, heads, head_dim):
    """Forward FLOPs of ``Attention`` on ``tokens`` tokens: the q/k/v projection, the scores
    Q K^T, the weighted sum of V and the output projection (a multiply-add is 2 FLOPs)."""
    attn_dim = heads * head_dim
    return (2 * tokens * dim * 3 * attn_dim            # [Q, K, V] = X W_qkv
            + 2 * heads * tokens * tokens * head_dim   # scores Q K^T
            + 2 * heads * tokens * tokens * head_dim   # weights times V
            + 2 * tokens * attn_dim * dim)             # output projection


def mlp_flops(tokens, dim, hidden):
    """Forward FLOPs of ``Mlp``: two linear layers, dim -> hidden -> dim."""
    return 2 * 2 * tokens * dim * hidden


def block_flops(tokens, dim, heads, head_dim, hidden):
    """Forward FLOPs of one ``Block``; LayerNorm, softmax and GELU are not counted, as
    ``torch.utils.flop_counter`` does not count them either."""
    return attention_flops(tokens, dim, heads, head_dim) + mlp_flops(tokens, dim, hidden)


# --- where the parameters and the FLOPs of a VisionTransformer sit ----------------------------

def component_costs(model, image_size=32):
    """Parameters and forward FLOPs per image of each part of a ``VisionTransformer``: the
    tokenizer (with the position embedding and class token), the attention and the MLP of every
    block (LayerNorms counted with their block), and the head (final LayerNorm, pooling, linear
    head). Returns a pandas DataFrame with one row per part; the rows add up to the whole model,
    which is checked."""
    import pandas as pd

    x = torch.zeros(1, model.cfg.in_chans, image_size, image_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total, per_module = _flop_counts(model, x)
    model.train(was_training)
    root = type(model).__name__

    def flops(prefix):
        name = f"{root}.{prefix}"
        return per_module.get(name, 0)

    rows = [("tokenizer", "tokenizer", count_parameters(model.patch_embed) + model.pos_embed.numel()
             + (model.cls_token.numel() if model.cls_token is not None else 0), flops("patch_embed"))]
    for i, block in enumerate(model.blocks):
        rows.append((f"block {i} attention", "attention",
                     count_parameters(block.attn) + count_parameters(block.norm1),
                     flops(f"blocks.{i}.attn")))
        rows.append((f"block {i} MLP", "MLP", count_parameters(block.mlp) + count_parameters(block.norm2),
                     flops(f"blocks.{i}.mlp")))
    head = [m for m in (model.norm, model.attn_pool, model.head) if m is not None]
    rows.append(("head", "head", sum(map(count_parameters, head)),
                 flops("head") + flops("attn_pool") + flops("norm")))
    df = pd.DataFrame(rows, columns=["component", "kind", "parameters", "flops"])
    if df.parameters.sum() != count_parameters(model) or df.flops.sum() != total:
        raise AssertionError(f"components ({df.parameters.sum()}, {df.flops.sum()}) do not add up "
                             f"to the model ({count_parameters(model)}, {total})")
    return df


# --- timing -----------------------------------------------------------------------------------

@dataclass
class Spread:
    """A timed quantity over repeated runs: median, quartiles and range."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values):
        values = sorted(values)
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = q3 = values[0]
        return cls(statistics.median(values), q1, q3, values[0], values[-1], len(values))

    def overlaps(self, other: "Spread") -> bool:
        """Whether the two ranges (min to max) share any value: two timings that overlap are not
        told apart by this measurement."""
        return self.min <= other.max and other.min <= self.max

    def format(self, digits=2):
        return f"{self.median:,.{digits}f} ({self.min:,.{digits}f}–{self.max:,.{digits}f})"


def _device_of(model):
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _input_dtype(model):
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _uncompiled(model):
    """The eager module behind a compiled one (``torch.compile``'s wrapper, or
    ``leanformer.quantize.CompiledForCPU``): counting FLOPs through the compiled module would
    make it compile again on its next call."""
    return getattr(model, "uncompiled", None) or getattr(model, "_orig_mod", model)


def _random_images(model, batch_size, image_size=32):
    return torch.rand(batch_size, 3, image_size, image_size, device=_device_of(model)).to(
        _input_dtype(model))


def _runner(model, precision, make_input):
    """A no-argument function that runs ``model`` on one input batch as it would be served."""
    from .precision import autocast, autocast_dtype

    device = _device_of(model)
    x = make_input()
    dtype = autocast_dtype(precision, device) if precision in ("fp32", "bf16", "fp16") else None

    def run():
        with torch.inference_mode(), autocast(dtype, device):
            model(x)

    return run


# --- the record -------------------------------------------------------------------------------

@dataclass
class Cost:
    """What one model costs. ``None`` in a column means "not measured"; ``notes`` says why."""

    name: str
    test_acc: float | None = None
    test_images: int | None = None
    parameters: int | None = None
    file_bytes: int | None = None
    file_format: str = ""
    flops: int | None = None  # forward, per image
    latency_ms: Spread | None = None  # batch 1
    throughput: Spread | None = None  # images per second at batch ``batch_size``
    batch_size: int = 256
    precision: str = "fp32"
    threads: int = 0
    machine: str = ""
    train_time_s: float | None = None
    train_epochs: float | None = None
    train_images_seen: int | None = None
    notes: dict = field(default_factory=dict)


def training_cost(provenance):
    """(wall time in s, epochs, images seen) of training, from a checkpoint's provenance or the
    record ``fit`` attaches to a model; ``None`` for what the record does not hold."""
    if not provenance:
        return None, None, None
    seconds = provenance.get("train_wall_time_s")
    epochs = provenance.get("epochs")
    images = provenance.get("train_images")
    seen = provenance.get("train_images_seen")
    if seen is None and epochs is not None and images is not None:
        seen = int(epochs * images)
    return seconds, epochs, seen


def _quantized_parts(model):
    """Names of modules whose weights are not plain float tensors (quantized kernels)."""
    names = []
    for name, m in model.named_modules():
        if "quantized" in type(m).__module__:
            names.append(name or type(m).__name__)
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and (type(w) not in (torch.Tensor, nn.Parameter)
                                            or not w.is_floating_point()):
            names.append(name)
    return names


def _file_size(model, shipped_file):
    if shipped_file is not None:
        path = Path(shipped_file)
        return path.stat().st_size, path.suffix.lstrip(".") or "file", None
    try:
        return safetensors_bytes(model), "safetensors", None
    except Exception as e:  # tensor subclasses (quantized weights) that safetensors cannot hold
        return size_on_disk(model), "torch.save", f"safetensors cannot hold these weights ({type(e).__name__})"


def measure_costs(models, data=None, *, files=None, precision="fp32", test_acc=None,
                  batch_size=256, rounds=5, latency_calls=10, throughput_calls=2, warmup=3,
                  image_size=32, inputs=None):
    """Measure every model of ``models`` (a dict name -> model) side by side. Returns a list of
    ``Cost``, in the order given.

    data:       a ``leanformer.data.CIFAR10``; its test images give each model's accuracy.
    files:      {name: path} of the file a lesson would ship for that model (a quantized model's
                own format, say). Otherwise the size of its weights as one .safetensors file,
                without metadata, so that a trained and an untrained model of one shape match.
    precision:  "fp32", "bf16" (autocast) or a label for a model that runs as it is ("int8");
                one value for all models or a dict by name.
    test_acc:   {name: accuracy} already measured, to skip evaluating it again.
    inputs:     {name: function(batch_size) -> input batch} for a model that does not take
                CIFAR-10 images (a text model, say); its FLOPs are then per input of that kind.

    Timing: after ``warmup`` untimed calls each, ``rounds`` rounds; in each round every model in
    turn runs ``latency_calls`` single images and ``throughput_calls`` batches of ``batch_size``.
    ``LEANFORMER_TIMING=brief`` (which ``make test`` sets: the lessons must run there, and nobody
    reads their timings) cuts that to one round of at most 3 single images and one batch; the
    table's note on the timing gives the counts either way.
    """
    from .train import evaluate

    if os.environ.get("LEANFORMER_TIMING", "") == "brief":
        rounds, latency_calls, throughput_calls = 1, min(latency_calls, 3), 1

    files, test_acc, inputs = files or {}, test_acc or {}, inputs or {}
    prec = {name: precision.get(name, "fp32") if isinstance(precision, dict) else precision
            for name in models}
    machine = machine_info()
    costs, runs = {}, {}
    for name, model in models.items():
        model.eval()
        cost = Cost(name, precision=prec[name], batch_size=batch_size, threads=torch.get_num_threads(),
                    machine=machine)
        quantized = _quantized_parts(model)
        params = count_parameters(model)
        if quantized and params == 0:
            cost.notes["parameters"] = "the weights are packed inside quantized modules"
        else:
            cost.parameters = params
        cost.file_bytes, cost.file_format, note = _file_size(model, files.get(name))
        if note:
            cost.notes["file"] = note
        if quantized:
            cost.notes["flops"] = ("not counted: torch.utils.flop_counter does not count quantized "
                                   f"kernels ({', '.join(quantized[:3])}{', ...' if len(quantized) > 3 else ''})")
        make = inputs.get(name) or (lambda n, m=model: _random_images(m, n, image_size))
        if name in inputs:
            cost.notes["input"] = ("its own inputs (from `inputs`), not images: its FLOPs, latency "
                                   "and throughput are per input of that kind")
        if not quantized:
            try:
                with torch.no_grad():
                    cost.flops = count_flops(_uncompiled(model), make(1))[0]
            except Exception as e:
                cost.notes["flops"] = f"not counted: {type(e).__name__}: {e}"
        if name in test_acc:
            cost.test_acc = test_acc[name]
            cost.test_images = len(data.test_labels) if data is not None else None
        elif data is not None:
            p = prec[name] if prec[name] in ("fp32", "bf16", "fp16") else "fp32"
            cost.test_acc = evaluate(model, data.test_images, data.test_labels, precision=p)[0]
            cost.test_images = len(data.test_labels)
        cost.train_time_s, cost.train_epochs, cost.train_images_seen = training_cost(
            getattr(model, "provenance", None))
        costs[name] = cost
        runs[name] = (_runner(model, prec[name], lambda: make(1)),
                      _runner(model, prec[name], lambda: make(batch_size)))

    for one, many in runs.values():
        for _ in range(warmup):
            one()
        many()
    samples = {name: ([], []) for name in models}
    for _ in range(rounds):
        for name, (one, many) in runs.items():
            for _ in range(latency_calls):
                t0 = time.perf_counter()
                one()
                samples[name][0].append((time.perf_counter() - t0) * 1000)
            for _ in range(throughput_calls):
                t0 = time.perf_counter()
                many()
                samples[name][1].append(batch_size / (time.perf_counter() - t0))
    for name, (lat, thr) in samples.items():
        costs[name].latency_ms = Spread.of(lat)
        costs[name].throughput = Spread.of(thr)
    return list(costs.values())


def measure_cost(model, data=None, name="model", **kwargs):
    """``measure_costs`` for a single model."""
    return measure_costs({name: model}, data, **kwargs)[0]


def cost_table(costs, baseline=None):
    """The costs as a pandas DataFrame, one row per model, with the same columns in every
    lesson. With ``baseline`` (a model's name), add each model's throughput relative to it."""
    import pandas as pd

    def mb(n):
        return None if n is None else n / 1e6

    rows = []
    for c in costs:
        rows.append({
            "model": c.name,
            "test accuracy (%)": None if c.test_acc is None else 100 * c.test_acc,
            "parameters": c.parameters,
            "file (MB)": mb(c.file_bytes),
            "format": c.file_format,
            "MFLOPs / image": None if c.flops is None else c.flops / 1e6,
            "latency, batch 1 (ms)": c.latency_ms.format(2) if c.latency_ms else None,
            f"throughput, batch {c.batch_size} (img/s)": c.throughput.format(0) if c.throughput else None,
            "precision": c.precision,
            "training (min)": None if c.train_time_s is None else c.train_time_s / 60,
            "epochs": c.train_epochs,
            "images seen": c.train_images_seen,
        })
    df = pd.DataFrame(rows).set_index("model")
    if baseline is not None:
        base = next(c for c in costs if c.name == baseline).throughput.median
        df[f"throughput vs {baseline}"] = [c.throughput.median / base if c.throughput else None
                                          for c in costs]
    return df


def show_costs(costs, baseline=None):
    """Display ``cost_table`` formatted for reading, then the machine and the notes."""
    from IPython.display import display

    df = cost_table(costs, baseline)
    fmt = {"test accuracy (%)": "{:.2f}", "parameters": "{:,.0f}", "file (MB)": "{:.2f}",
           "MFLOPs / image": "{:.1f}", "training (min)": "{:.1f}", "epochs": "{:g}",
           "images seen": "{:,.0f}", f"throughput vs {baseline}": "{:.2f}×"}
    display(df.style.format({k: v for k, v in fmt.items() if k in df.columns}, na_rep="—"))
    c = costs[0]
    print(f"Timed side by side on {c.machine}; latency and throughput: median (min–max) over "
          f"{c.latency_ms.n} single inputs and {c.throughput.n} batches of {c.batch_size} per model.")
    notes = {}  # a note that several models share is printed once, with their names
    for c in costs:
        for column, why in c.notes.items():
            notes.setdefault((column, why), []).append(c.name)
    for (column, why), names in notes.items():
        who = "every model" if len(names) == len(costs) > 1 else "; ".join(names)
        print(f"{who}, {column}: {why}")
    return df


# --- the machine ------------------------------------------------------------------------------

def cpu_flags():
    """The instruction-set extensions that decide low-precision speed on this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


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
    flags = cpu_flags()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}{' (' + ', '.join(flags) + ')' if flags else ''}, {os.cpu_count()} cores, "
            f"{_plural(torch.get_num_threads(), 'torch thread')}{gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def confusion_matrix(predictions, labels, num_classes=10):
    """(true class, predicted class) counts as a (num_classes, num_classes) int64 tensor."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion):
    """Recall of each class: the diagonal over the row sums."""
    return confusion.diag().double() / confusion.sum(1).clamp(min=1).double()


def accuracy_noise(acc_a: float, acc_b: float, n: int) -> float:
    """Twice the standard error of the difference of two accuracies, each over ``n`` images,
    treated as independent samples: a cautious yardstick for "could this be chance?"."""
    return 2 * (acc_a * (1 - acc_a) / n + acc_b * (1 - acc_b) / n) ** 0.5


def compare_accuracy(name_a: str, acc_a: float, name_b: str, acc_b: float, n: int) -> str:
    """One sentence comparing two accuracies measured on the same ``n`` test images, which
    calls a difference only when it is larger than twice its standard error. The error treats
    the two as independent samples of ``n`` images, which overstates the noise of a comparison
    on the same images: a cautious yardstick. It knows nothing of the seed, so a difference it
    calls is still one run each, and the sentence says so."""
    diff = acc_a - acc_b
    noise = accuracy_noise(acc_a, acc_b, n)
    head = f"{name_a}: {acc_a:.1%}, {name_b}: {acc_b:.1%} on {n:,} test images"
    if abs(diff) <= noise:
        return (f"{head}. The difference ({100 * diff:+.1f} points) is within twice its standard "
                f"error (±{100 * noise:.1f} points): these runs cannot tell the two apart.")
    ahead = name_a if diff > 0 else name_b
    return (f"{head}. {ahead[0].upper() + ahead[1:]} is ahead by {100 * abs(diff):.1f} points, more than "
            f"twice the standard error (±{100 * noise:.1f} points); but it is one run each, so "
            "train both with another seed before crediting the recipe.")
