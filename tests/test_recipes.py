import importlib.util
import sys

import pytest
from helpers import REPO

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("recipe_train", REPO / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_recipe_parses_with_the_real_parser(train_script, recipe):
    script_args, training_args, model_args = train_script.parse([str(recipe)])
    assert recipe.read_text().startswith("#")  # a comment header naming the hardware target
    assert "Hardware target" in recipe.read_text().split("\n\n")[0]
    assert training_args.cl_layer > 0 and model_args.use_peft


def test_flags_override_the_yaml(train_script):
    recipe = str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml")
    script_args, training_args, _ = train_script.parse([recipe, "--k", "1", "--cl_weight", "0.5"])
    assert (script_args.k, training_args.cl_weight) == (1, 0.5)
    script_args, training_args, _ = train_script.parse(["--config", recipe])
    assert (script_args.k, training_args.cl_weight) == (5, 0.001)


def test_unknown_keys_are_rejected(train_script, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: wnut17\ncl_wieght: 0.1\n")
    with pytest.raises(ValueError, match="cl_wieght"):
        train_script.parse([str(recipe)])
    with pytest.raises(ValueError, match="bogus"):
        train_script.parse([str(REPO / "recipes" / "smollm2" / "wnut17_intra.yaml"), "--bogus", "1"])
