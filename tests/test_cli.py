"""The command line's tests, all of them: finished work is never overwritten unasked, a resume
continues only the run it was written by, every user error is one line and a non-zero exit, and
each command writes the files it promises (train, prune, sparsity-sweep, quantize, evaluate,
costs, make-subset).

Tests call ``main`` in this process where they can (a second Python spends seconds importing
torch); those that check what a real process prints, or its exit status, run ``python -m leanformer``.
They train the "quick" or "finetune-brief" recipe for one epoch on the tiny image folder."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from leanformer import load_model
from leanformer.cli import main
from leanformer.checkpoint import save_model


def train_args(folder, data, *more):
    """Train "quick" for one epoch into folder/quick.safetensors (--out: the file)."""
    return ["train", "--recipe", "quick", "--epochs", "1", "--data", str(data),
            "--out", str(folder / "quick.safetensors"), *more]


def fails(argv, capsys):
    """Run ``argv`` and return (exit status, message): the command must stop with one line on
    stderr and a non-zero status."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    code, err = e.value.code, capsys.readouterr().err
    if isinstance(code, str):  # sys.exit("error: ..."): Python prints the text, status 1
        code, err = 1, err + code + "\n"
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    return code, err


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_finished_model_is_kept_unless_forced(tmp_path, tiny_folder, tmp_cache, capsys):
    out = tmp_path / "runs"
    main(train_args(out, tiny_folder))
    files = snapshot(out)
    assert set(files) == {"quick.safetensors", "quick.json", "quick.last.pt"}

    for flags in ((), ("--resume",)):  # --resume continues a run; it does not replace its model
        _, err = fails(train_args(out, tiny_folder, *flags), capsys)
        assert f"{out / 'quick.safetensors'} exists" in err and "--force" in err and "--resume" in err
        assert snapshot(out) == files  # byte for byte

    inode = (out / "quick.safetensors").stat().st_ino
    main(train_args(out, tiny_folder, "--force"))
    assert (out / "quick.safetensors").stat().st_ino != inode  # a new file took its place
    assert "--force" in json.loads((out / "quick.json").read_text())["command"]
    load_model(out / "quick.safetensors")


def test_another_runs_state_is_kept_unless_resumed_or_forced(tmp_path, tiny_folder, tmp_cache, capsys):
    out = tmp_path / "runs"
    main(train_args(out, tiny_folder))
    # As if killed after its last epoch's state was saved, before the model was written.
    (out / "quick.safetensors").unlink()
    (out / "quick.json").unlink()
    state = (out / "quick.last.pt").read_bytes()
    _, err = fails(train_args(out, tiny_folder), capsys)
    assert f"{out / 'quick.last.pt'} exists" in err and "--resume" in err and "--force" in err
    assert (out / "quick.last.pt").read_bytes() == state and not (out / "quick.safetensors").exists()
    main(train_args(out, tiny_folder, "--resume"))
    assert "Resumed from" in capsys.readouterr().out
    assert json.loads((out / "quick.json").read_text())["epochs"] == 1


def test_resume_refuses_another_teacher_data_or_starting_model(tmp_path, tiny_folder, tmp_cache, capsys,
                                                              make_tiny_vit):
    start, other_start = tmp_path / "start.safetensors", tmp_path / "other-start.safetensors"
    teacher, other_teacher = tmp_path / "teacher.safetensors", tmp_path / "other-teacher.safetensors"
    for seed, path in enumerate((start, other_start, teacher, other_teacher)):
        save_model(make_tiny_vit(seed), path)
    other_data = tmp_path / "other-data"
    shutil.copytree(tiny_folder, other_data)
    next((other_data / "train" / "cat").iterdir()).unlink()  # one training image fewer
    out = tmp_path / "runs"

    def args(init=start, teach=teacher, data=tiny_folder, *more):
        return ["train", "--recipe", "finetune-brief", "--init", str(init), "--teacher", str(teach),
                "--data", str(data), "--out", str(out / "kd.safetensors"), *more]

    main(args())
    printed = capsys.readouterr().out
    # Without --alpha and --temperature, a teacher means lesson 06's setting, and says so.
    assert "soft targets, alpha 0.9, temperature 4" in printed and "lesson 06" in printed
    record = json.loads((out / "kd.json").read_text())["teacher"]
    assert (record["kind"], record["alpha"], record["temperature"]) == ("soft", 0.9, 4.0)
    for suffix in (".safetensors", ".json"):  # killed before the model was written
        (out / f"kd{suffix}").unlink()

    for expected, argv in [
            ("another teacher", args(start, other_teacher, tiny_folder, "--resume")),
            ("another teacher", args(start, teacher, tiny_folder, "--resume", "--alpha", "0.5")),
            ("other data", args(start, teacher, other_data, "--resume")),
            ("other weights", args(other_start, teacher, tiny_folder, "--resume"))]:
        code, err = fails(argv, capsys)
        assert code == 1 and expected in err and str(out / "kd.last.pt") in err, err
    assert not (out / "kd.safetensors").exists()
    main(args(start, teacher, tiny_folder, "--resume"))  # the same run resumes
    assert (out / "kd.safetensors").exists()


def test_out_names_the_model_file_not_a_folder_or_another_suffix(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for out, says in [(runs, "is a folder; --out names the model file to write, "
                             f"e.g. {runs / 'quick'}.safetensors"),
                      (tmp_path / "quick.pt", "--out names the model file to write, "
                                              "NAME.safetensors")]:
        code, err = fails(["train", "--recipe", "quick", "--out", str(out)], capsys)
        assert code == 2 and says in err, err
    assert list(tmp_path.iterdir()) == [runs] and not any(runs.iterdir())


@pytest.mark.parametrize("flags, says", [
    (["--qat-bits", "9"], "2 to 8 bits, got '9'"),
    (["--qat-bits", "1"], "2 to 8 bits, got '1'"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["--epochs", "-3"], "must be a positive integer"),
    (["--qat-bits", "4"], "--qat-bits fine-tunes a trained model; give it with --init"),
    (["--qat-group", "32"], "give --qat-bits too"),
    (["--alpha", "0.5"], "give --teacher too"),
    (["--teacher", "t.safetensors", "--kind", "hard", "--temperature", "4"], "does not apply"),
    (["--teacher", "t.safetensors", "--alpha", "2"], "--alpha must lie in [0, 1]"),
])
def test_a_flag_that_cannot_be_is_one_line_and_status_2(flags, says, tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    code, err = fails(["train", "--recipe", "quick", "--out", out, *flags], capsys)
    assert code == 2 and says in err and err.startswith("python -m leanformer train: error:"), err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_the_one_line_holds_in_a_real_process(tmp_path):
    for flags in (["--qat-bits", "9"], ["--epochs", "0"]):
        run = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "quick",
                              "--out", str(tmp_path / "m.safetensors"), *flags],
                             capture_output=True, text=True)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert "Traceback" not in run.stderr and "usage:" not in run.stderr


def test_qat_groups_default_to_the_librarys_and_must_divide_the_layers(tmp_path, tiny_folder,
                                                                      tmp_cache, capsys, make_tiny_vit):
    import inspect

    from leanformer.quantize import prepare_qat_

    library = inspect.signature(prepare_qat_).parameters["group_size"].default
    start = tmp_path / "start.safetensors"
    save_model(make_tiny_vit(0), start)  # Linear layers of 32 and 64 inputs
    base = ["train", "--recipe", "qat", "--epochs", "1", "--init", str(start), "--qat-bits", "4",
            "--data", str(tiny_folder),
            "--out", str(tmp_path / "runs" / "qat.safetensors")]
    code, err = fails(base + ["--qat-group", "7"], capsys)
    assert code == 2 and "--qat-group 7 must divide" in err and "blocks.0.attn.qkv (32)" in err
    main(base)
    qat = json.loads((tmp_path / "runs" / "qat.json").read_text())["qat"]
    assert qat["weight_bits"] == 4 and qat["group_size"] == library


def test_train_names_the_recipes_when_one_is_unknown(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "refrence",
                          "--out", str(tmp_path / "m.safetensors")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1
    assert "unknown recipe 'refrence'" in out.stderr and "reference" in out.stderr


def test_a_fine_tune_with_a_teacher_records_both_starting_points(tmp_path, tiny_folder, make_tiny_vit):
    start, teacher = tmp_path / "start.safetensors", tmp_path / "teacher.safetensors"
    save_model(make_tiny_vit(), start, {"note": "the starting model's own record"})
    save_model(make_tiny_vit(1), teacher)
    run = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "finetune-brief",
                          "--init", str(start), "--teacher", str(teacher), "--alpha", "0.5",
                          "--temperature", "2", "--data", str(tiny_folder),
                          "--out", str(tmp_path / "student.safetensors")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "student.json").read_text())
    assert record["init"]["provenance"] == {"note": "the starting model's own record"}
    assert record["init"]["weights_sha256"] == load_model(start).weights_sha256
    assert record["teacher"] == {"path": str(teacher), "weights_sha256": load_model(teacher).weights_sha256,
                                 "arch": "vit", "kind": "soft", "alpha": 0.5, "temperature": 2.0}
    assert load_model(tmp_path / "student.safetensors").provenance["teacher"]["alpha"] == 0.5


def test_train_makes_a_convnet_that_evaluate_loads(tmp_path, tiny_folder):
    from leanformer.convnet import ConvNet

    # Without --out, the model goes to runs/RECIPE.safetensors under the working folder.
    run = subprocess.run([sys.executable, "-m", "leanformer", "train", "--recipe", "teacher-cnn-quick",
                          "--epochs", "1", "--data", str(tiny_folder)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "runs" / "teacher-cnn-quick.safetensors"
    assert (tmp_path / "runs" / "teacher-cnn-quick.json").exists()
    model = load_model(path)
    assert isinstance(model, ConvNet) and model.cfg.widths == (16, 32, 32)
    assert json.loads(path.with_suffix(".json").read_text())["arch"] == "convnet"
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(path), "--data",
                          str(tiny_folder), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout[out.stdout.index("{"):])["test_images"] == 40


def test_prune_writes_a_smaller_model_that_loads(tmp_path, make_tiny_vit):
    src, out = tmp_path / "m.safetensors", tmp_path / "pruned.safetensors"
    save_model(make_tiny_vit(), src)  # 2 heads, 64 MLP units in its one block
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


def test_prune_by_the_per_example_taylor_score(tmp_path, tiny_folder, make_tiny_vit):
    src, out = tmp_path / "m.safetensors", tmp_path / "pruned.safetensors"
    save_model(make_tiny_vit(), src)
    args = [sys.executable, "-m", "leanformer", "prune", str(src), "--heads", "1",
            "--mlp-units", "20", "--score", "taylor-per-example", "--out", str(out)]
    run = subprocess.run(args + ["--data", str(tiny_folder), "--images", "40"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = load_model(out).provenance
    assert record["score"] == "taylor-per-example" and record["score_images"] == 40


def test_prune_drops_blocks_and_tokenizer_channels_and_records_why(tmp_path, tiny_folder, make_tiny_vit):
    src, out = tmp_path / "m.safetensors", tmp_path / "pruned.safetensors"
    save_model(make_tiny_vit(depth=3), src)
    args = [sys.executable, "-m", "leanformer", "prune", str(src), "--heads", "1", "--mlp-units", "20",
            "--data", str(tiny_folder), "--images", "40", "--out", str(out)]
    run = subprocess.run(args + ["--blocks", "2", "--tokenizer-channels", "8"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pruned = load_model(out)
    assert pruned.cfg.depth == 2 and pruned.cfg.widths() == [(1, 20), (1, 20)]
    assert pruned.cfg.conv_channels == (8, 32)
    record = pruned.provenance
    assert len(record["block_losses"]) == 3 and len(record["kept_blocks"]) == 2
    assert len(record["kept_tokenizer_channels"]) == 8 and "kept blocks" in run.stdout
    bad = subprocess.run(args[:-1] + [str(tmp_path / "x.safetensors"), "--blocks", "4"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--blocks: keep between 1 and 3, got 4" in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_sparsity_sweep_writes_its_table_and_refuses_bad_levels(tmp_path, tiny_folder, make_tiny_vit):
    src, out = tmp_path / "m.safetensors", tmp_path / "sweep.json"
    save_model(make_tiny_vit(), src)
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
    assert {"fine-tuned (even)", "fine-tuned (odd)"} <= set(row)  # one half chooses
    assert result["recipe"]["name"] == "finetune-brief" and result["test_images"] == 40
    saved = load_model(tmp_path / "sparse" / "sparse-50.safetensors")
    weights = torch.cat([saved.blocks[0].mlp.fc1.weight.flatten(), saved.blocks[0].attn.qkv.weight.flatten()])
    assert 0.3 < (weights == 0).float().mean() < 0.8  # global: about half, not exactly per layer
    assert saved.provenance["test_acc"] == row["fine-tuned"]
    beside = json.loads((tmp_path / "sparse" / "sparse-50.json").read_text())  # readable without Python
    assert beside["weights_sha256"] == saved.weights_sha256 and beside["sparsity"] == 0.5



def test_quantize_writes_an_int8_file_that_evaluate_and_costs_read(tmp_path, tiny_folder, tmp_cache, capsys,
                                                                   make_tiny_vit):
    from leanformer.quantize import load_quantized

    model_path = tmp_path / "tiny.safetensors"
    save_model(make_tiny_vit(0), model_path)
    out = tmp_path / "tiny-int8.pt"
    main(["quantize", str(model_path), "--path", "torchao-int8-dynamic", "--out", str(out)])
    quantized, record = load_quantized(out)
    assert record["kind"] == "int8-dynamic" and out.stat().st_size < model_path.stat().st_size

    capsys.readouterr()
    main(["evaluate", str(out), "--data", str(tiny_folder), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["quantization"]["kind"] == "int8-dynamic" and result["test_images"] == 40
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # the file's model, not a float stand-in: its logits are int8's
        assert not torch.equal(quantized(x), load_model(model_path)(x))

    table = tmp_path / "costs.json"
    main(["costs", str(model_path), str(out), "--data", str(tiny_folder),
          "--rounds", "1", "--out", str(table)])
    costs = json.loads(table.read_text())["costs"]
    assert [c["name"] for c in costs] == ["tiny.safetensors", "tiny-int8.pt"]
    assert costs[1]["file_bytes"] == out.stat().st_size  # the int8 file as shipped


def test_quantize_refuses_a_file_name_its_path_does_not_write_and_an_existing_file(tmp_path, capsys,
                                                                                   make_tiny_vit):
    model_path = tmp_path / "tiny.safetensors"
    save_model(make_tiny_vit(0), model_path)
    code, err = fails(["quantize", str(model_path), "--path", "pt2e-static-int8", "--out", str(tmp_path / "q.pt")], capsys)
    assert code == 2 and "writes a .pt2 file" in err
    (tmp_path / "q.pt").write_bytes(b"finished work")
    code, err = fails(["quantize", str(model_path), "--path", "torchao-int8-dynamic", "--out", str(tmp_path / "q.pt")],
                      capsys)
    assert code == 2 and "--force" in err and (tmp_path / "q.pt").read_bytes() == b"finished work"


def test_evaluate_names_a_file_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\0" * 16)
    _, err = fails(["evaluate", str(bad)], capsys)
    assert "model.bin" in err and ".safetensors" in err


def test_evaluate_reports_accuracy_and_source_as_json(tmp_path, make_tiny_vit, tiny_folder):
    """In a process of its own, so that standard output is the JSON alone (the default data,
    the shipped subset in quick mode, is test_data's; the 40 test images here keep it short)."""
    path = tmp_path / "m.safetensors"
    save_model(make_tiny_vit(), path)
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(path), "--json", "--tta",
                          "--data", str(tiny_folder)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)  # the JSON alone: a file written with > is valid JSON
    assert result["test_images"] == 40 and str(tiny_folder) in result["data_source"]
    for key in ("test_acc", "test_acc_flip_tta", "test_acc_flip_shift_tta"):
        assert 0.0 <= result[key] <= 1.0
    assert result["weights_sha256"] == load_model(path).weights_sha256


def test_evaluate_scores_and_records_the_intx_form(tmp_path, tiny_folder, make_tiny_vit, capsys):
    from leanformer import quantize as Q
    from leanformer.data import load_cifar10
    from leanformer.evaluate import evaluate, predict
    from leanformer.record import recorded_predictions

    path, record = tmp_path / "m.safetensors", tmp_path / "pred.safetensors"
    save_model(make_tiny_vit(0), path)
    model, data = load_model(path), load_cifar10(tiny_folder)
    capsys.readouterr()
    main(["evaluate", str(path), "--data", str(tiny_folder), "--intx-bits", "2", "--json",
          "--record-predictions", str(record)])
    result = json.loads(capsys.readouterr().out)
    two_bit = Q.intx_quantize(model, 2, None)
    assert result["form"] == "intx-w2-per-row-a8"
    assert result["test_acc"] == pytest.approx(evaluate(two_bit, data.test_images,
                                                        data.test_labels)[0])
    form = Q.intx_form(2, None)
    assert torch.equal(recorded_predictions(model, data, record, form),
                       predict(two_bit, data.test_images).argmax(1))
    assert recorded_predictions(model, data, record) is None  # not the float model's answers
    code, err = fails(["evaluate", str(path), "--data", str(tiny_folder), "--intx-bits", "9"],
                      capsys)
    assert code == 2 and "--intx-bits" in err and "1 to 8" in err


def test_evaluate_reports_a_missing_checkpoint_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "No model file" in out.stderr and "Traceback" not in out.stderr


def test_evaluate_names_weights_that_do_not_fit_the_config_in_one_line(misfit_model_file):
    out = subprocess.run([sys.executable, "-m", "leanformer", "evaluate", str(misfit_model_file)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "blocks.0.mlp.fc1.weight" in out.stderr


def test_make_subset_reports_a_bad_source_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["make-subset", str(tmp_path / "nowhere.tar.gz"), str(tmp_path / "out" / "s.tar.gz")])
    assert str(e.value.code).startswith("error: make-subset: no archive at")
    assert "\n" not in str(e.value.code)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_distill_sweep_trains_each_setting_once_and_resumes(tmp_path, tiny_folder, tmp_cache, make_tiny_vit,
                                                            monkeypatch):
    import leanformer.distill

    teacher = tmp_path / "teacher.safetensors"
    save_model(make_tiny_vit(1), teacher)
    out = tmp_path / "sweep.json"
    argv = ["distill-sweep", "--teacher", str(teacher), "--recipe", "quick", "--data", str(tiny_folder),
            "--temperatures", "2", "--alphas", "0.5", "--hard-alphas", "--out", str(out)]
    real_fit, trained = leanformer.distill.fit, []
    monkeypatch.setattr(leanformer.distill, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    main(argv)
    table = json.loads(out.read_text())
    assert [(r["kind"], r["alpha"], r["temperature"]) for r in table["results"]] == [
        ("soft", 0.0, 1.0), ("soft", 0.5, 2.0)]  # the labels alone, then the one setting asked for
    assert table["teacher"]["weights_sha256"] == load_model(teacher).weights_sha256
    assert table["command"].startswith("python -m leanformer distill-sweep") and len(trained) == 2
    main(argv)  # a second run finds every setting done: nothing is trained again
    assert len(trained) == 2 and json.loads(out.read_text())["results"] == table["results"]


def test_distill_sweep_chooses_on_a_validation_split_of_the_training_images(
        tmp_path, tiny_folder, tmp_cache, make_tiny_vit, capsys):
    teacher = tmp_path / "teacher.safetensors"
    save_model(make_tiny_vit(1), teacher)
    out = tmp_path / "sweep-val.json"
    argv = ["distill-sweep", "--teacher", str(teacher), "--recipe", "quick",
            "--data", str(tiny_folder), "--temperatures", "2", "--alphas", "0.5",
            "--hard-alphas", "--out", str(out)]
    main(argv + ["--train-images", "40", "--val-images", "20", "--split-seed", "1"])
    table = json.loads(out.read_text())
    sizes = (table["train_images"], table["val_images"], table["test_images"])
    assert sizes == (40, 20, 40)
    assert "seed 1" in table["data_source"] and "--val-images 20" in table["command"]
    assert all(0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
               for r in table["results"])
    with pytest.raises(SystemExit) as e:  # a training part without a validation part
        main(argv + ["--train-images", "40"])
    assert e.value.code == 2 and "give --val-images too" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # more than the tiny set holds of each class
        main(argv + ["--train-images", "60", "--val-images", "30"])
    assert "fewer than the 9" in str(e.value.code) and "\n" not in str(e.value.code)


def test_a_trained_model_names_its_test_set_so_its_accuracy_can_stand_in(tmp_path, tiny_folder, tmp_cache):
    from leanformer.data import load_cifar10
    from leanformer.record import recorded_accuracy, test_set_sha256

    main(train_args(tmp_path, tiny_folder))
    model, data = load_model(tmp_path / "quick.safetensors"), load_cifar10(tiny_folder, verbose=False)
    assert model.provenance["test_set_sha256"] == test_set_sha256(data)
    assert recorded_accuracy(model, data) == model.provenance["test_acc"]


def test_seed_overrides_the_recipes_and_is_recorded(tmp_path, tiny_folder, tmp_cache):
    """--seed trains a second run of one recipe; the provenance says which seed it was."""
    for seed in (0, 5):
        main(train_args(tmp_path / f"s{seed}", tiny_folder, "--seed", str(seed)))
    records = [json.loads((tmp_path / f"s{s}" / "quick.json").read_text()) for s in (0, 5)]
    assert [r["recipe"]["seed"] for r in records] == [0, 5]
    assert records[0]["weights_sha256"] != records[1]["weights_sha256"]
