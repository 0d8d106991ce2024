"""Quantization: store and compute with small integers instead of 32-bit floats.

The arithmetic by hand, fake quantization of a whole model (the rounding simulated in float), and
thin wrappers over the library paths: torchao's ``quantize_``, PT2E static quantization with the
x86 Inductor quantizer, the legacy ``quantize_dynamic``, compiling for the CPU, quantization-aware
training, and saving and loading each result. One module per job, from the bottom up:

    arithmetic   int_range, quant_params, quantize, dequantize, fake_quantize, int8_linear
    integer      one Linear layer in integers only: int32 bias, output requantized to int8
                 by a fixed-point multiplier (int8_linear_integer)
    layers       which layers hold weights, the inputs they see and their ranges, FLOPs by kind
    fake         fake quantization of a model's weights and layer inputs; per-layer sensitivity
    compiled     compile_for_cpu and the CompiledForCPU wrapper it returns
    library      the torchao, legacy and PT2E paths, PATHS and quantize_model
    qat          quantization-aware training, the intx model built from its weights, its IntxScheme
                 and intx_form (that model as a named form, for the record of test predictions)
    safety       the checks that a .pt2 file holds nothing that could run code, and
                 load_program, which reads it only after them
    saving       save_quantized, load_quantized and the file format

How a technique is called, here as in ``prune``, ``distill`` and ``precision``:

* data: a function that reads a batch of images takes ``images`` (uint8, or float in
  [0, 1]) and, where it needs them, ``labels``, as tensors (``pt2e_quantize``'s
  calibration images, ``layer_sensitivity``, ``activation_ranges``);
  ``CIFAR10.train_sample`` draws such a batch;
* models: a name ending in ``_`` changes the model it is given in place and returns
  that same model (``prepare_qat_``, ``convert_qat_``), as torchao's ``quantize_``
  does; every other function leaves its arguments as they were and returns a new model
  (``torchao_quantize``, ``intx_quantize``, ``pt2e_quantize``,
  ``legacy_quantize_dynamic``, ``fake_quantize_weights``, ``quantize_model``).
  ``compile_for_cpu`` returns a wrapper that holds the model itself, as
  ``torch.compile`` does, and changes nothing in it.

Every public name is imported here: ``from leanformer import quantize as Q; Q.int_range(8)``.
"""
from .arithmetic import dequantize, fake_quantize, int8_linear, int_range, quant_params, quantize
from .integer import fixed_point_multiplier, int8_linear_integer, requantize
from .layers import QUANTIZABLE, activation_ranges, capture_inputs, flops_by_kind, quantizable_layers
from .fake import fake_quantize_weights, fake_quantized_inputs, layer_sensitivity
from .compiled import CompiledForCPU, compile_for_cpu
from .library import (PATHS, TORCHAO_CONFIGS, has_legacy_quantize_dynamic, legacy_quantize_dynamic,
                      machine_int8_support, pt2e_quantize, quantize_model, torchao_config,
                      torchao_quantize)
from .qat import (IntxScheme, convert_qat_, intx_form, intx_quantize, intx_scheme,
                  prepare_qat_, qat_configs)
from .safety import load_program
from .saving import QFORMAT, load_quantized, save_quantized, tensor_bytes_in_file

__all__ = [
    # arithmetic
    "int_range", "quant_params", "quantize", "dequantize", "fake_quantize", "int8_linear",
    # integer
    "fixed_point_multiplier", "requantize", "int8_linear_integer",
    # layers
    "QUANTIZABLE", "quantizable_layers", "capture_inputs", "activation_ranges", "flops_by_kind",
    # fake
    "fake_quantize_weights", "fake_quantized_inputs", "layer_sensitivity",
    # compiled
    "CompiledForCPU", "compile_for_cpu",
    # library
    "machine_int8_support", "TORCHAO_CONFIGS", "torchao_config", "torchao_quantize",
    "has_legacy_quantize_dynamic", "legacy_quantize_dynamic", "pt2e_quantize", "PATHS", "quantize_model",
    # qat
    "qat_configs", "prepare_qat_", "convert_qat_", "intx_scheme", "IntxScheme",
    "intx_quantize", "intx_form",
    # safety
    "load_program",
    # saving
    "QFORMAT", "save_quantized", "load_quantized", "tensor_bytes_in_file",
]
