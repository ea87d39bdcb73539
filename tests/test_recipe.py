"""Recipe start-up: overrides, run options and the experiment folder."""

from summarymixing.recipe import load_recipe


def test_step_limit_run_option_reaches_the_yaml(tmp_path):
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text(
        f"output_folder: {tmp_path}/out\n"
        "optimizer_step_limit: 10\n"
        "schedule_steps: !ref <optimizer_step_limit>\n"
        "seed: 1\n"
    )
    hparams, run_opts = load_recipe([str(hparams_file), "--optimizer_step_limit=3", "--seed=7"])
    assert int(run_opts["optimizer_step_limit"]) == 3
    assert hparams["schedule_steps"] == 3 and hparams["seed"] == 7
    assert (tmp_path / "out" / "hyperparams.yaml").exists()


def test_without_the_run_option_the_yaml_value_stays(tmp_path):
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text(f"output_folder: {tmp_path}/out\noptimizer_step_limit: 10\n")
    hparams, run_opts = load_recipe([str(hparams_file)])
    assert hparams["optimizer_step_limit"] == 10 and run_opts["optimizer_step_limit"] is None
