import torch

from leanformer.machine import cpu_flags, machine_info


def test_machine_info_names_cores_threads_and_versions():
    info = machine_info()
    assert "\n" not in info and f"torch {torch.__version__}" in info and "Python 3." in info
    threads = torch.get_num_threads()
    assert f"{threads} torch thread{'' if threads == 1 else 's'}" in info


def test_cpu_flags_are_the_known_extensions_in_a_fixed_order():
    known = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = cpu_flags()
    assert flags == [f for f in known if f in flags]
