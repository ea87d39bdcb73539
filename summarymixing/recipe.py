"""Start-up shared by every recipe: command line, DDP group, hyperparameters, experiment folder."""

from __future__ import annotations

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


def load_recipe(argv: list[str] | None) -> tuple[dict, dict]:
    """Parse ``hparams_file [--key=value ...]``, join the DDP group when launched by
    ``torchrun``, load the YAML with the overrides and create ``output_folder`` (holding a copy
    of the YAML, the overrides and the log).

    ``--optimizer_step_limit`` is a SpeechBrain run option, which never reaches the YAML; it is
    forwarded there as well, so that anything the YAML derives from it (a learning-rate
    schedule's length) ends at the same step.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    run_opts : dict
        SpeechBrain's run options (device, precision, DDP, ...).

    Example
    -------
    >>> hparams, run_opts = load_recipe(  # doctest: +SKIP
    ...     ["hparams/slurp/mini.yaml", "--data_folder=/data/slurp", "--device=cuda"]
    ... )

    (Skipped as a doctest: SpeechBrain's experiment logging writes to standard output;
    ``tests/test_recipe.py`` runs it.)
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if run_opts["optimizer_step_limit"] is not None:
        overrides += f"\noptimizer_step_limit: {int(run_opts['optimizer_step_limit'])}"
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts
