import json
from dataclasses import fields

import pytest

from leanformer.config import CHECKPOINTS
from leanformer.convnet import ConvNetConfig
from leanformer.families import ARCHS
from leanformer.recipes import RECIPES, Recipe, RecipeError, get_recipe


def test_every_recipe_is_filed_under_its_name_and_fits_its_arch():
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        config_cls, _ = ARCHS[recipe.arch]
        config_cls.from_dict(recipe.model)  # raises on a field the arch's config does not have


def test_get_recipe_returns_a_copy_with_the_overrides():
    recipe = get_recipe("quick", epochs=1)
    assert recipe.epochs == 1 and RECIPES["quick"].epochs != 1
    recipe.model["embed_dim"] = 1  # a caller's edit leaves the registered recipe alone
    assert RECIPES["quick"].model["embed_dim"] == 64


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError, match="reference"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="do not exist"):
        get_recipe("quick", learning_rate=1e-3)


def test_the_finetune_recipe_is_short_and_gentle():
    ref, ft = get_recipe("reference"), get_recipe("finetune")
    assert ft.epochs <= 0.15 * ref.epochs and ft.lr < ref.lr and ft.model == ref.model


# Every .json under checkpoints/ records a training run or a sweep of runs, but lesson 08's
# ledger and lesson 09's serving record, which record measurements (tests/test_ledger.py and
# tests/test_deploy.py check them).
MEASUREMENTS = {"ledger.json", "serving.json"}
RECORDS = sorted(p for p in CHECKPOINTS.rglob("*.json") if p.name not in MEASUREMENTS)


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_shipped_provenance_matches_the_recipe_of_its_name(path):
    """A checkpoint's recorded recipe is what ``get_recipe`` holds today under its name (the file
    name, or the recorded name); fields added to ``Recipe`` after the checkpoint was made are
    missing from its record and must be off."""
    record = json.loads(path.read_text())
    recorded = record["recipe"]
    # Files named after their recipe (the ablations predate their own names); others record it.
    name = path.stem if path.stem in RECIPES else recorded["name"]
    expected = json.loads(json.dumps(get_recipe(name).to_dict()))  # tuples become lists
    defaults = {f.name: f.default for f in fields(Recipe) if f.name not in ("name", "model")}
    for key, value in expected.items():
        if key == "name":
            continue
        if key in ("seed", "epochs") and f"--{key} {recorded[key]}" in record.get("command", ""):
            continue  # a second or longer run of the recipe, as its command says (--seed, --epochs)
        if key in recorded:
            assert recorded[key] == value, (path.name, key)
        else:
            assert value == defaults[key], f"{path.name} predates {key!r}, which must be off"


def test_the_teacher_recipe_is_airbench94_restated():
    r = get_recipe("teacher-cnn")
    assert r.arch == "convnet" and r.optimizer == "sgd" and r.nesterov and r.momentum == 0.85
    assert ConvNetConfig.from_dict(r.model) == ConvNetConfig()  # airbench94's widths
    # 11.5 per 1,024 examples, decoupled from the momentum, as a mean-loss rate at batch 512
    assert r.lr == pytest.approx(11.5 / (1024 * (1 + 1 / (1 - r.momentum))) * r.batch_size)
    assert r.label_smoothing == 0.2 and r.crop_padding == 2 and r.flip and r.batchnorm_lr_scale == 64
    quick = get_recipe("teacher-cnn-quick")
    assert quick.arch == "convnet" and quick.epochs <= 2 and max(quick.model["widths"]) <= 32


def test_a_recipes_precision_is_checked_when_it_is_made():
    assert get_recipe("quick", precision="fp16").precision == "fp16"
    for bad in ("bfloat16", "int8"):
        says = f"precision must be one of auto, fp32, bf16, fp16, got '{bad}'"
        with pytest.raises(RecipeError, match=says):
            get_recipe("quick", precision=bad)
