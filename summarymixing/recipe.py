"""Start-up shared by every recipe: command line, DDP group, hyperparameters, experiment folder.

A recipe calls :func:`load_recipe` with its own ``__file__``; a recipe that runs several
experiments from one command line (IEMOCAP's folds) calls the three steps itself:
:func:`parse_recipe_arguments`, :func:`load_hparams` and :func:`create_experiment_directory`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process


def parse_recipe_arguments(argv: list[str] | None) -> tuple[str, dict, str]:
    """Parse ``hparams_file [--key=value ...]`` and join the DDP group when launched by
    ``torchrun``.

    ``--optimizer_step_limit`` is a SpeechBrain run option, which never reaches the YAML; it is
    forwarded there as well, so that anything the YAML derives from it (a learning-rate
    schedule's length) ends at the same step.

    Arguments
    ---------
    argv : list of str, optional
        The command line without the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    hparams_file : str
        The YAML file.
    run_opts : dict
        SpeechBrain's run options (device, precision, DDP, ...).
    overrides : str
        The YAML overrides of the command line.

    Example
    -------
    >>> hparams_file, run_opts, overrides = parse_recipe_arguments(
    ...     ["train.yaml", "--seed=3", "--optimizer_step_limit=5", "--device=cpu"]
    ... )
    >>> hparams_file, run_opts["device"], overrides.split()
    ('train.yaml', 'cpu', ['seed:', '3', 'optimizer_step_limit:', '5'])
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if run_opts["optimizer_step_limit"] is not None:
        overrides += f"\noptimizer_step_limit: {int(run_opts['optimizer_step_limit'])}"
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    return hparams_file, run_opts, overrides


def load_hparams(hparams_file: str, overrides: str | Mapping) -> dict:
    """The YAML loaded with ``overrides`` (a YAML string or a mapping).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.yaml"
    >>> _ = path.write_text("fold: 1\\nfolder: !ref out/fold_<fold>\\n")
    >>> load_hparams(str(path), {"fold": 4})["folder"]
    'out/fold_4'
    """
    with open(hparams_file, encoding="utf-8") as stream:
        return load_hyperpyyaml(stream, overrides)


def create_experiment_directory(
    recipe_file: str, experiment_directory: str, hparams_file: str, overrides: str | Mapping
) -> None:
    """SpeechBrain's ``create_experiment_directory`` (resolved YAML, log, environment), with a
    copy of ``recipe_file``, the script that ran.

    SpeechBrain archives the module that calls it, which would be this one; the recipe's own
    file takes its place.

    Arguments
    ---------
    recipe_file : str
        The recipe's ``__file__``.
    experiment_directory : str
        Created if needed.
    hparams_file : str
        The YAML file, saved resolved with ``overrides`` as ``hyperparams.yaml``.
    overrides : str or mapping
        The YAML overrides.

    Example
    -------
    >>> create_experiment_directory(  # doctest: +SKIP
    ...     __file__, "results/slurp", "hparams/slurp/mini.yaml", "seed: 1"
    ... )

    (Skipped as a doctest: SpeechBrain's experiment logging writes to standard output;
    ``tests/test_recipe.py`` runs it.)
    """
    sb.create_experiment_directory(
        experiment_directory=experiment_directory,
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if if_main_process():
        (Path(experiment_directory) / Path(__file__).name).unlink(missing_ok=True)
        shutil.copy(recipe_file, experiment_directory)


def load_recipe(recipe_file: str, argv: list[str] | None) -> tuple[dict, dict]:
    """:func:`parse_recipe_arguments`, :func:`load_hparams` and
    :func:`create_experiment_directory` in ``output_folder``: the start-up of a recipe.

    Arguments
    ---------
    recipe_file : str
        The recipe's ``__file__``, archived in ``output_folder``.
    argv : list of str, optional
        The command line without the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    run_opts : dict
        SpeechBrain's run options (device, precision, DDP, ...).

    Example
    -------
    >>> hparams, run_opts = load_recipe(  # doctest: +SKIP
    ...     __file__, ["hparams/slurp/mini.yaml", "--data_folder=/data/slurp", "--device=cuda"]
    ... )

    (Skipped as a doctest: SpeechBrain's experiment logging writes to standard output;
    ``tests/test_recipe.py`` runs it.)
    """
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_hparams(hparams_file, overrides)
    create_experiment_directory(recipe_file, hparams["output_folder"], hparams_file, overrides)
    return hparams, run_opts
