"""Training under torchrun: two processes on the CPU (gloo) take the same steps as one process
with the whole batch, and the ``train`` command trains, resumes after a kill and records its
world size. Each torchrun start costs a few seconds of imports; the slices are small."""
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import tiny_vit
from safetensors.torch import load_file

from leanformer import distributed, load_model, save_model, scaling
from leanformer.data import write_folders
from leanformer.distributed import World
from leanformer.distributed_check import launch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
SUBSET = Path(__file__).resolve().parents[1] / "data" / "cifar10-subset.tar.gz"


def _run_check(tmp_path, processes, **options):
    name = "-".join(f"{k}{v}" for k, v in options.items())
    return launch(processes, tmp_path / f"w{processes}-{name}.safetensors", SUBSET, threads=1, **options)


def test_shards_cover_a_batch_and_the_weights_make_the_global_mean():
    for n, size in [(128, 2), (80, 3), (7, 7), (5, 2)]:
        parts = [distributed.shard(n, World(r, size)) for r in range(size)]
        sizes = [p.stop - p.start for p in parts]
        assert parts[0].start == 0 and parts[-1].stop == n and sum(sizes) == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:])) and max(sizes) - min(sizes) <= 1
        # DistributedDataParallel averages: mean over ranks of weight * local mean = global mean
        local_means = torch.rand(size)
        weights = torch.tensor([distributed.loss_weight(k, n, World(r, size)) for r, k in enumerate(sizes)])
        global_mean = (local_means * torch.tensor(sizes)).sum() / n
        torch.testing.assert_close((weights * local_means).mean(), global_mean)


def test_a_ring_all_reduce_sends_two_n_minus_one_over_n_of_the_gradients():
    assert scaling.ring_allreduce_bytes(1000, 1) == 0
    assert scaling.ring_allreduce_bytes(1000, 2) == 4000
    assert scaling.ring_allreduce_bytes(1000, 8) == 2 * 7 / 8 * 4000
    with pytest.raises(ValueError, match="at least 1"):
        scaling.ring_allreduce_bytes(1000, 0)


def test_step_time_on_paper_splits_compute_and_adds_or_overlaps_the_traffic():
    # 1 s of compute, 250 million parameters: 1 GB of gradients, 1 s per GB at 8 Gbit/s
    assert scaling.step_seconds(1.0, 250_000_000, 1, 8.0) == 1.0
    assert scaling.step_seconds(1.0, 250_000_000, 2, 8.0) == pytest.approx(0.5 + 1.0)
    assert scaling.step_seconds(1.0, 250_000_000, 2, 8.0, overlap=True) == pytest.approx(1.0)
    assert scaling.step_seconds(1.0, 250_000_000, 4, 8.0, latency_s=0.01) == pytest.approx(
        0.25 + 1.5 + 0.06)
    # 1 million parameters at 64 Gbit/s: (N - 1) / N ms of traffic against 1 s of compute.
    # Half efficiency holds while 1/N + (N - 1)/N * 1e-3 <= 2/N, that is up to N = 1001.
    assert scaling.largest_useful(1.0, 1_000_000, 64.0, max_processes=10_000) == 1001
    assert scaling.largest_useful(1.0, 10**9, 1.0, max_processes=64) == 1  # 64 s of traffic
    # Sending overtakes computing where (N - 1)/N * 1e-3 >= 1/N, that is at N = 1001
    assert scaling.sending_overtakes(1.0, 1_000_000, 64.0, max_processes=2000) == 1001
    assert scaling.sending_overtakes(1.0, 1_000_000, 64.0, max_processes=1000) is None
    with pytest.raises(ValueError, match="positive"):
        scaling.step_seconds(1.0, 10, 2, 0.0)


def test_two_processes_take_the_same_five_steps_as_one(tmp_path):
    """SGD with momentum, float32, no augmentation: each step's update is linear in the summed
    gradient, so two half batches leave the weights that one whole batch does, to rounding.
    A tensor whose gradient is zero in exact arithmetic (the attention pool's bias: a softmax
    cancels it) holds rounding alone, below 1e-9, and is checked absolutely."""
    one, rec1 = _run_check(tmp_path, 1, optimizer="sgd")
    two, rec2 = _run_check(tmp_path, 2, optimizer="sgd")
    assert rec1["world_size"] == 1 and rec2["world_size"] == 2 and rec2["threads"] == 1
    assert len(rec2["losses"]) == 5
    for name, w in one.items():
        diff = (two[name] - w).norm().item()
        if w.norm() > 1e-6:
            assert diff <= 1e-6 * w.norm().item(), name
        else:
            assert diff < 1e-9, name
    torch.testing.assert_close(torch.tensor(rec2["losses"]), torch.tensor(rec1["losses"]),
                               rtol=1e-6, atol=0)
    assert rec1["losses"][-1] < rec1["losses"][0] - 0.02  # the five steps did learn


def test_with_augmentation_two_processes_follow_the_same_loss_curve(tmp_path):
    """Each process draws its own crops, flips and mixing, so the curves are not equal but the
    same within noise: 20 steps of 128, mean loss over the last ten within 0.1 of each other."""
    _, rec1 = _run_check(tmp_path, 1, augment=True, steps=20, batch_size=128)
    _, rec2 = _run_check(tmp_path, 2, augment=True, steps=20, batch_size=128)
    late1, late2 = sum(rec1["losses"][10:]) / 10, sum(rec2["losses"][10:]) / 10
    assert late1 < rec1["losses"][0] - 0.05 and late2 < rec2["losses"][0] - 0.05  # both learn
    assert abs(late1 - late2) < 0.1


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, subset):
    """1,000 training and 100 test images of the shipped subset as class folders: epochs of
    a second or so, long enough to kill a run inside one."""
    return write_folders(subset, tmp_path_factory.mktemp("small-cifar"), 1000, 100)


def _train(folder, out, teacher, *flags):
    return TORCHRUN + ["--nproc-per-node", "2", "-m", "leanformer", "train", "--recipe", "quick",
                       "--epochs", "3", "--data", str(folder), "--out", str(out),
                       "--teacher", str(teacher), *flags]


def test_train_under_torchrun_resumes_after_a_kill_to_the_same_weights(tmp_path, small_folder):
    """A distillation run (the teacher asked in every process) in two processes: it records its
    world size, and killed after its first epoch and resumed, it ends where an unbroken run does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    teacher = tmp_path / "teacher.safetensors"
    save_model(tiny_vit(seed=1), teacher)
    whole = tmp_path / "whole.safetensors"
    run = subprocess.run(_train(small_folder, whole, teacher), capture_output=True, text=True,
                         timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes (torch.distributed, gloo)" in run.stdout
    model = load_model(whole)
    assert model.provenance["world_size"] == 2 and model.provenance["epochs"] == 3
    assert model.provenance["teacher"]["path"] == str(teacher)

    killed = tmp_path / "killed.safetensors"
    state = killed.with_suffix(".last.pt")
    proc = subprocess.Popen(_train(small_folder, killed, teacher), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # As a power cut would: both workers and torchrun at once, with no chance to clean up.
    agent = psutil.Process(proc.pid)
    for p in agent.children(recursive=True) + [agent]:
        p.kill()
    proc.wait()
    assert state.exists() and not killed.exists(), "the run ended before it could be killed"
    resumed = subprocess.run(_train(small_folder, killed, teacher, "--resume"), capture_output=True,
                             text=True, timeout=180, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout
    a, b = load_file(whole), load_file(killed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
