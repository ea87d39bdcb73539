"""Recipe start-up: overrides, run options and the experiment folder (with the recipe that ran)."""

from summarymixing.recipe import load_recipe


def test_step_limit_run_option_reaches_the_yaml(tmp_path):
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text(
        f"output_folder: {tmp_path}/out\n"
        "optimizer_step_limit: 10\n"
        "schedule_steps: !ref <optimizer_step_limit>\n"
        "seed: 1\n"
    )
    argv = [str(hparams_file), "--optimizer_step_limit=3", "--seed=7"]
    hparams, run_opts = load_recipe(__file__, argv)
    assert int(run_opts["optimizer_step_limit"]) == 3
    assert hparams["schedule_steps"] == 3 and hparams["seed"] == 7
    assert (tmp_path / "out" / "hyperparams.yaml").exists()


def test_without_the_run_option_the_yaml_value_stays(tmp_path):
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text(f"output_folder: {tmp_path}/out\noptimizer_step_limit: 10\n")
    hparams, run_opts = load_recipe(__file__, [str(hparams_file)])
    assert hparams["optimizer_step_limit"] == 10 and run_opts["optimizer_step_limit"] is None


def test_the_recipe_that_ran_is_archived(tmp_path):
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text(f"output_folder: {tmp_path}/out\n")
    recipe = tmp_path / "train.py"
    recipe.write_text("# the recipe that ran\n")
    load_recipe(str(recipe), [str(hparams_file)])
    archived = sorted(path.name for path in (tmp_path / "out").glob("*.py"))
    assert archived == ["train.py"]  # not summarymixing/recipe.py, SpeechBrain's caller
    assert (tmp_path / "out" / "train.py").read_text() == recipe.read_text()
