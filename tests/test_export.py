"""Serving files: each format written by export_model answers as eager PyTorch does (float
formats within float tolerance, int8 formats close), its format is detected from its bytes, a
fresh process loads it, and a damaged, swapped or foreign file is refused with a clear error."""
import json
import zipfile

import pytest
import torch
from conftest import tiny_vit

from leanformer.checkpoint import CheckpointError
from leanformer.export import (cold_start, detect_format, export_model, file_bytes, load_runner,
                               quantize_onnx)

IMAGES = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    return tiny_vit(seed=3).eval()


@pytest.mark.parametrize("fmt, tolerance", [("exported", 1e-5), ("onnx", 1e-4)])
def test_float_formats_answer_as_eager_pytorch(model, program_file, onnx_file, fmt, tolerance):
    path = {"onnx": onnx_file, "exported": program_file}[fmt]
    runner = load_runner(path)
    assert runner.format == detect_format(path) == fmt
    with torch.no_grad():
        want = model(IMAGES)
    for batch in (1, 7, 40):  # the batch dimension is dynamic
        got = runner(IMAGES[:batch])
        assert got.shape == (batch, 10)
        assert (got - want[:batch]).abs().max() < tolerance
    assert file_bytes(path) == path.stat().st_size > 0  # one file, no external data


@pytest.fixture(scope="module")
def program_file(tmp_path_factory, model):
    return export_model(model, tmp_path_factory.mktemp("pt2") / "m.pt2", "exported")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, model):
    return export_model(model, tmp_path_factory.mktemp("onnx") / "m.onnx", "onnx")


def test_onnx_int8_files_are_smaller_and_close(tmp_path):
    model = tiny_vit(seed=3, conv_channels=(16, 64), embed_dim=64, depth=2).eval()
    plain = export_model(model, tmp_path / "float.onnx", "onnx")
    with torch.no_grad():
        want = model(IMAGES)
    for kind in ("dynamic", "static"):
        path = quantize_onnx(plain, tmp_path / f"{kind}.onnx", kind, calibration_images=IMAGES)
        runner = load_runner(path)
        assert runner.format == "onnx"  # ONNX Runtime runs int8 and float files the same way
        error = (runner(IMAGES) - want).abs().max()
        assert 0 < error < 0.1 * want.abs().max(), kind  # int8 rounding, not another model
        assert file_bytes(path) < 0.6 * file_bytes(plain), kind


def test_static_quantization_needs_calibration_images(tmp_path, model, onnx_file):
    with pytest.raises(ValueError, match="calibration_images"):
        export_model(model, tmp_path / "m.onnx", "onnx-int8-static")
    with pytest.raises(ValueError, match="calibration_images"):
        quantize_onnx(onnx_file, tmp_path / "q.onnx", "static")


def test_a_fresh_process_loads_the_file_and_reports_its_cold_start(onnx_file):
    cold = cold_start(onnx_file, threads=1)
    assert cold["process_s"] > cold["load_s"] > 0
    # Python, torch and ONNX Runtime: a few hundred MB, not this test process's own peak
    assert 100 < cold["peak_mb"] < 1500


def test_unknown_formats_and_foreign_files_are_refused(tmp_path, model):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, tmp_path / "m.x", "tflite")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="neither a .pt2 archive nor an .onnx"):
        load_runner(text)
    with pytest.raises(CheckpointError, match="No model file"):
        load_runner(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        load_runner(broken)


def test_a_damaged_program_is_refused_and_the_old_file_survives_a_failed_export(tmp_path):
    path = tmp_path / "m.pt2"
    export_model(tiny_vit(seed=3), path, "exported")
    good = path.read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_runner(cut, "exported")
    training = tiny_vit(seed=3).train()
    with pytest.raises(ValueError, match="eval mode"):
        export_model(training, path, "exported")
    assert path.read_bytes() == good


def test_a_program_that_would_call_python_is_refused_before_torch_reads_it(tmp_path, program_file):
    path = program_file
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("models/model.json"):
                data = data.replace(b'"torch.ops.aten.', b'"os.system.', 1)
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="not a torch.ops operator"):
        load_runner(evil, "exported")


def test_an_aoti_package_loads_only_with_a_manifest_that_matches_its_bytes(tmp_path):
    # Compiling a package takes a minute, so this test checks the gate in front of loading
    # with a stand-in archive; the lesson's command compiles and measures a real one.
    package = tmp_path / "m.pt2"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("m/data/aotinductor/model/x.wrapper.so", b"\x7fELF not really")
    assert detect_format(package) == "aoti"
    with pytest.raises(CheckpointError, match="manifest .* is missing"):
        load_runner(package)
    manifest = tmp_path / "m.pt2.json"
    manifest.write_text(json.dumps({"format": "aoti", "sha256": "0" * 64,
                                    "torch": torch.__version__}))
    with pytest.raises(CheckpointError, match="damaged or is not the one built here"):
        load_runner(package)

