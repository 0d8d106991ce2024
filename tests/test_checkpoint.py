import json
import subprocess
import sys

import pytest
import torch

from leanformer import checkpoint, load_model
from leanformer.checkpoint import CheckpointError, save_model
from leanformer.config import CHECKPOINTS
from leanformer.files import tensors_sha256
from leanformer.model import ViTConfig, VisionTransformer


def tiny_model():
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32,
                                       depth=1, num_heads=2)).eval()


def test_round_trip_gives_the_same_logits_in_eval_mode(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.safetensors"
    sha = save_model(model, path, provenance={"test_acc": 0.5})
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.cfg == model.cfg and loaded.provenance == {"test_acc": 0.5}
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert tensors_sha256(loaded.state_dict()) == sha


def test_saved_checkpoints_get_the_usual_file_permissions(tmp_path):
    # safetensors creates owner-only files; a checkpoint shared on a machine must stay readable.
    import os
    umask = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        save_model(tiny_model(), path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_tampered_weights_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # flip one bit inside the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(path)


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="No model file"):
        load_model(tmp_path / "missing.safetensors")


def test_training_state_loads_without_unpickling_code(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="Cannot resume"):
        checkpoint.load_state(path)


def test_cli_evaluate_reports_accuracy_and_source_as_json(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path)
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(path), "--json", "--tta"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)  # the JSON alone: a file written with > is valid JSON
    assert result["test_images"] == 10000 and "shipped subset" in result["data_source"]
    for key in ("test_acc", "test_acc_flip_tta", "test_acc_flip_shift_tta"):
        assert 0.0 <= result[key] <= 1.0
    assert result["weights_sha256"] == load_model(path).weights_sha256


def test_cli_reports_a_missing_checkpoint_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "No model file" in out.stderr and "Traceback" not in out.stderr


def test_a_model_with_uneven_blocks_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32, depth=3, num_heads=4,
                    block_widths=((4, 64), (2, 37), (3, 5)))
    model = VisionTransformer(cfg).eval()
    path = tmp_path / "pruned.safetensors"
    sha = save_model(model, path)
    loaded = load_model(path)
    assert loaded.cfg.widths() == [(4, 64), (2, 37), (3, 5)] and loaded.weights_sha256 == sha
    assert loaded.blocks[1].mlp.fc2.weight.shape == (32, 37)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_shipped_checkpoints_load_unchanged():
    root = CHECKPOINTS
    for path in [root / "reference.safetensors", *sorted((root / "ablations").glob("*.safetensors"))]:
        model = load_model(path)
        assert model.cfg.block_widths == () and model.cfg.widths() == [(4, 256)] * 4, path


@pytest.mark.parametrize("path", sorted(CHECKPOINTS.rglob("*.safetensors")),
                         ids=lambda p: p.stem)
def test_every_shipped_checkpoint_loads_and_its_json_names_its_weights(path):
    model = load_model(path)  # checks the weights against the sha256 in the file's metadata
    beside = json.loads(path.with_suffix(".json").read_text())
    assert beside["weights_sha256"] == model.weights_sha256
    assert beside["command"].startswith("python -m leanformer ")


def test_weights_that_do_not_fit_the_config_give_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # keep the metadata, cut one tensor
        metadata = f.metadata()
    state = load_file(str(path))
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"][:10].contiguous()
    state["blocks.0.mlp.fc1.bias"] = state["blocks.0.mlp.fc1.bias"][:10].contiguous()
    metadata["sha256"] = tensors_sha256(state)  # a consistent file of the wrong shape
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match the model its config describes") as e:
        load_model(path)
    assert "blocks.0.mlp.fc1.weight" in str(e.value) and "\n" not in str(e.value)
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "blocks.0.mlp.fc1.weight" in out.stderr


def test_cli_names_the_recipes_when_one_is_unknown(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "refrence",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1
    assert "unknown recipe 'refrence'" in out.stderr and "reference" in out.stderr


def test_cli_prune_writes_a_smaller_model_that_loads(tmp_path):
    src, out = tmp_path / "m.safetensors", tmp_path / "pruned.safetensors"
    save_model(tiny_model(), src)  # 2 heads, 64 MLP units in its one block
    run = subprocess.run([sys.executable, "-m", "leanformer", "prune", str(src), "--heads", "1",
                          "--mlp-units", "20", "--score", "magnitude", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pruned = load_model(out)
    assert pruned.cfg.widths() == [(1, 20)]
    assert pruned.provenance["score"] == "magnitude" and len(pruned.provenance["kept_heads"][0]) == 1
    assert pruned(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    too_many = subprocess.run([sys.executable, "-m", "leanformer", "prune", str(src), "--heads", "3",
                               "--mlp-units", "20", "--score", "magnitude", "--out", str(tmp_path / "x.safetensors")],
                              capture_output=True, text=True)
    assert too_many.returncode != 0 and "--heads: keep between 1 and 2 per block, got 3" in too_many.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_fine_tune_with_a_teacher_records_both_starting_points(tmp_path, tiny_folder):
    start, teacher = tmp_path / "start.safetensors", tmp_path / "teacher.safetensors"
    save_model(tiny_model(), start, {"note": "the starting model's own record"})
    torch.manual_seed(1)
    save_model(VisionTransformer(ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32,
                                           depth=1, num_heads=2)), teacher)
    run = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "finetune-brief",
                          "--init", str(start), "--teacher", str(teacher), "--alpha", "0.5",
                          "--temperature", "2", "--data", str(tiny_folder), "--out", str(tmp_path),
                          "--name", "student"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "student.json").read_text())
    assert record["init"]["provenance"] == {"note": "the starting model's own record"}
    assert record["init"]["weights_sha256"] == load_model(start).weights_sha256
    assert record["teacher"] == {"path": str(teacher), "weights_sha256": load_model(teacher).weights_sha256,
                                 "arch": "vit", "kind": "soft", "alpha": 0.5, "temperature": 2.0}
    assert load_model(tmp_path / "student.safetensors").provenance["teacher"]["alpha"] == 0.5


def test_cli_sparsity_sweep_writes_its_table_and_refuses_bad_levels(tmp_path, tiny_folder):
    src, out = tmp_path / "m.safetensors", tmp_path / "sweep.json"
    save_model(tiny_model(), src)
    bad = subprocess.run([sys.executable, "-m", "leanformer", "sparsity-sweep", str(src), "--levels", "50",
                          "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode != 0 and "each in [0, 1)" in bad.stderr and not out.exists()
    run = subprocess.run([sys.executable, "-m", "leanformer", "sparsity-sweep", str(src), "--levels", "0.5",
                          "--data", str(tiny_folder), "--out", str(out), "--save-dir", str(tmp_path / "sparse")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["sparsity"] == 0.5 and 0.0 <= row["fine-tuned"] <= 1.0
    assert result["recipe"]["name"] == "finetune-brief" and result["test_images"] == 40
    saved = load_model(tmp_path / "sparse" / "sparse-50.safetensors")
    weights = torch.cat([saved.blocks[0].mlp.fc1.weight.flatten(), saved.blocks[0].attn.qkv.weight.flatten()])
    assert 0.3 < (weights == 0).float().mean() < 0.8  # global: about half, not exactly per layer
    assert saved.provenance["test_acc"] == row["fine-tuned"]
    beside = json.loads((tmp_path / "sparse" / "sparse-50.json").read_text())  # readable without Python
    assert beside["weights_sha256"] == saved.weights_sha256 and beside["sparsity"] == 0.5


def test_the_file_names_its_arch_and_an_unknown_one_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["arch"] == "vit"
    # A file from before the ConvNet (no "arch") is a ViT; one from a newer leanformer is refused.
    state = load_file(str(path))
    save_file(state, str(path), metadata={k: v for k, v in metadata.items() if k != "arch"})
    assert isinstance(load_model(path), VisionTransformer)
    save_file(state, str(path), metadata={**metadata, "arch": "resnet"})
    with pytest.raises(CheckpointError, match="architecture 'resnet'.*knows vit, convnet"):
        load_model(path)


def test_save_model_refuses_a_model_it_could_not_load(tmp_path):
    with pytest.raises(CheckpointError, match="VisionTransformer or a ConvNet, not a Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_weights_sha256_covers_zero_dim_tensors_and_is_unchanged_for_others():
    one = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "n": torch.tensor(5)}
    other = {"w": one["w"], "n": torch.tensor(6)}
    assert tensors_sha256(one) != tensors_sha256(other)
    import hashlib  # the digest of a tensor with dimensions is what it always was

    h = hashlib.sha256()
    h.update(b"w|torch.float32|(2, 3)|")
    h.update(one["w"].view(torch.uint8).numpy().tobytes())
    assert tensors_sha256({"w": one["w"]}) == h.hexdigest()


def test_cli_trains_a_convnet_that_evaluate_loads(tmp_path, tiny_folder):
    from leanformer.convnet import ConvNet

    run = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "teacher-cnn-quick",
                          "--epochs", "1", "--data", str(tiny_folder), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "teacher-cnn-quick.safetensors"
    model = load_model(path)
    assert isinstance(model, ConvNet) and model.cfg.widths == (16, 32, 32)
    assert json.loads(path.with_suffix(".json").read_text())["arch"] == "convnet"
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(path), "--data",
                          str(tiny_folder), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout[out.stdout.index("{"):])["test_images"] == 40


def test_a_changed_copy_never_carries_its_originals_digest(tmp_path):
    import copy

    from leanformer.prune import prune_model

    model = VisionTransformer(ViTConfig(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0))
    sha = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.weights_sha256 == sha == copy.deepcopy(loaded).weights_sha256
    pruned = prune_model(loaded, [[0]], [list(range(16))])  # one head and half the units kept
    assert pruned.weights_sha256 == tensors_sha256(pruned.state_dict()) != sha
    with torch.no_grad():
        loaded.head.bias += 1  # a fine-tune in place changes the digest too
    assert loaded.weights_sha256 != sha
