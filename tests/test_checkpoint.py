import json

import pytest
import torch

from leanformer import checkpoint, load_model
from leanformer.checkpoint import CheckpointError, save_model
from leanformer.config import CHECKPOINTS
from leanformer.files import tensors_sha256
from leanformer.model import ViTConfig, VisionTransformer


def test_round_trip_gives_the_same_logits_in_eval_mode(tmp_path, make_tiny_vit):
    model = make_tiny_vit()
    path = tmp_path / "m.safetensors"
    sha = save_model(model, path, provenance={"test_acc": 0.5})
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.cfg == model.cfg and loaded.provenance == {"test_acc": 0.5}
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert tensors_sha256(loaded.state_dict()) == sha


def test_saved_checkpoints_get_the_usual_file_permissions(tmp_path, make_tiny_vit):
    # safetensors creates owner-only files; a checkpoint shared on a machine must stay readable.
    import os
    umask = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        save_model(make_tiny_vit(), path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_tampered_weights_are_refused(tmp_path, make_tiny_vit):
    path = tmp_path / "m.safetensors"
    save_model(make_tiny_vit(), path)
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


def test_weights_that_do_not_fit_the_config_give_one_clear_error(misfit_model_file):
    with pytest.raises(CheckpointError, match="do not match the model its config describes") as e:
        load_model(misfit_model_file)
    assert "blocks.0.mlp.fc1.weight" in str(e.value) and "\n" not in str(e.value)


def test_shipped_checkpoints_load_unchanged():
    root = CHECKPOINTS
    for path in [root / "reference.safetensors", *sorted((root / "ablations").glob("*.safetensors"))]:
        model = load_model(path)
        assert model.cfg.block_widths == () and model.cfg.widths() == [(4, 256)] * 4, path


# Every .safetensors file under checkpoints/ is a model, but the records of predictions: the
# shipped models' test predictions (leanformer.record.PREDICTIONS, checked in
# tests/test_record.py) and the ledger's (leanformer.ledger, checked in tests/test_ledger.py).
MODEL_FILES = sorted(p for p in CHECKPOINTS.rglob("*.safetensors")
                     if not p.name.endswith("predictions.safetensors"))


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_every_shipped_checkpoint_loads_and_its_json_names_its_weights(path):
    model = load_model(path)  # checks the weights against the sha256 in the file's metadata
    beside = json.loads(path.with_suffix(".json").read_text())
    assert beside["weights_sha256"] == model.weights_sha256
    assert beside["command"].startswith("python -m leanformer ")


def test_the_file_names_its_arch_and_an_unknown_one_is_refused(tmp_path, make_tiny_vit):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_model(make_tiny_vit(), path)
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
