"""What a model costs, and how sure a comparison of two models is. One module per job:

    size     parameters and bytes of the weights (``count_parameters``, ``safetensors_bytes``)
    flops    FLOPs counted and by formula, and per part of a ViT (``count_flops``,
             ``attention_flops``, ``component_costs``)
    timing   models timed side by side, each timing a ``Spread``
             (``time_side_by_side``, ``rate_side_by_side``), and the interval of a ratio
             of two such timings with its verdict on a target (``ratio_interval``,
             ``verdict``)
    training_speed
             training steps timed the same way, in images per second (``time_training``,
             ``training_step``)
    stats    confusion matrix, the noise of an accuracy difference (``accuracy_noise``), and two
             models compared image by image (``paired_comparison``: McNemar's test and a
             bootstrap interval; ``paired_sentence`` says it in words)
    cost     the ``Cost`` record and ``measure_costs``, which fills it from the four above
    table    the records as one table (``cost_table``, ``show_costs``)

Every lesson from 02 on reports its models with ``measure_costs`` and shows them with
``show_costs``, so the cost ledger of lesson 08 compares like with like:

    costs = measure_costs({"reference": model, "pruned": pruned}, data)
    show_costs(costs)

Every public name of the submodules is importable from ``leanformer.measure`` itself, and so,
as a convenience for the lessons, are ``machine_info`` and ``cpu_flags`` of
``leanformer.machine``.
"""
from ..machine import cpu_flags, machine_info
from .cost import Cost, LabelledTestSet, measure_cost, measure_costs, training_cost
from .flops import attention_flops, block_flops, component_costs, count_flops, mlp_flops
from .size import count_parameters, safetensors_blob, safetensors_bytes, size_on_disk, tensors_bytes
from .stats import (PairedComparison, accuracy_noise, compare_accuracy, confusion_matrix, mcnemar_p,
                    paired_comparison, paired_sentence, per_class_accuracy)
from .table import cost_table, show_costs
from .timing import (Spread, rate_side_by_side, ratio_interval, time_side_by_side,
                     verdict)
from .training_speed import time_training, training_step

__all__ = [
    "count_parameters", "size_on_disk", "safetensors_blob", "tensors_bytes", "safetensors_bytes",
    "count_flops", "attention_flops", "mlp_flops", "block_flops", "component_costs",
    "Spread", "time_side_by_side", "rate_side_by_side", "ratio_interval", "verdict",
    "time_training", "training_step",
    "confusion_matrix", "per_class_accuracy", "accuracy_noise", "compare_accuracy",
    "PairedComparison", "mcnemar_p", "paired_comparison", "paired_sentence",
    "Cost", "LabelledTestSet", "training_cost", "measure_costs", "measure_cost",
    "cost_table", "show_costs",
    "machine_info", "cpu_flags",
]
