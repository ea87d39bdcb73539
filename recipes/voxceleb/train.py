"""VoxCeleb speaker verification with a frozen (or fine-tuned) pre-trained wav2vec 2.0 encoder.

MP3S protocol as the authors ran it: a learned softmax-weighted sum of all hidden states feeds an
ECAPA-TDNN trained as a speaker classifier with the additive angular margin (AAM) softmax. Every
time a training (or validation) row is read, a new ``crop_seconds`` crop is cut at a uniformly
random offset of its utterance (a file is listed once per whole crop it holds; shorter files are
not listed); validation reports the speaker-identification accuracy on such crops of held-out
utterances of the training speakers. At test time, whole enrolment and test utterances are
embedded one at a time (no padding) and each trial of the official list is scored by the cosine
similarity of the two embeddings (no score normalisation); EER and minDCF are written to
``metrics_file``.

Run, with the project installed (``make venv`` or ``pip install -e .``)::

    python recipes/voxceleb/train.py hparams/voxceleb/train.yaml \\
        --data_folder=/data/voxceleb1 --pretrained_path=/models/w2v2.pt
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.metric_stats import EER, ClassificationStats, minDCF

from data_prep.audio import AudioReadError, read_audio
from data_prep.voxceleb import prepare_voxceleb
from summarymixing.downstream.brain import DownstreamBrain
from summarymixing.downstream.data import (
    add_audio_pipeline,
    add_label_pipeline,
    load_manifest,
)
from summarymixing.recipe import load_recipe

logger = logging.getLogger(__name__)


def random_crop(
    wav: str, start: int, stop: int, seconds: float, sample_rate: int = 16000
) -> torch.Tensor:
    """A ``seconds``-long crop of the ``[start, stop)`` sample span of an audio file, at an offset
    drawn uniformly (``torch``'s generator) from every offset that fits.

    Arguments
    ---------
    wav : str
        Audio file.
    start, stop : int
        The span to crop from, in samples at the file's own rate.
    seconds : float
        Crop length.
    sample_rate : int
        Rate of the returned waveform (the crop is resampled if the file's differs).

    Returns
    -------
    torch.Tensor
        shape: [round(seconds * file rate) resampled to sample_rate]; ``seconds * sample_rate``
        samples for a file at ``sample_rate``.

    Raises
    ------
    AudioReadError
        Naming the file, if it cannot be read or the span is shorter than the crop.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.arange(16000 * 4) % 1000 / 1000, 16000)
    >>> random_crop(path, 0, 16000 * 4, 3.0).shape
    torch.Size([48000])
    >>> random_crop(path, 0, 16000 * 2, 3.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.audio.AudioReadError: ...a.wav: expected at least 3.0 s in [0, 32000), got 2.0 s
    """
    try:
        rate = sf.info(wav).samplerate
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioReadError(f"{wav}: cannot read audio ({err})") from err
    size = round(seconds * rate)
    if stop - start < size:
        raise AudioReadError(f"{wav}: expected at least {seconds} s in [{start}, {stop}), got "
                             f"{(stop - start) / rate} s")
    offset = start + int(torch.randint(stop - start - size + 1, ()))
    return read_audio(wav, offset, offset + size, sample_rate=sample_rate)


class SpeakerBrain(DownstreamBrain):
    """ECAPA-TDNN speaker embeddings with an AAM-softmax classifier; cosine verification."""

    checkpoint_metric = "accuracy"
    higher_is_better = True

    def compute_forward(self, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage) -> tuple:
        """Cosine scores against the speaker prototypes ``(B, 1, N)`` and embeddings
        ``(B, 1, E)``."""
        feats, lens = self.features(batch, stage)  # (B, T, D)
        embeddings = self.modules.head(feats, lens)  # (B, 1, E)
        return self.modules.classifier(embeddings), embeddings

    def compute_objectives(
        self, predictions: tuple, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        """AAM-softmax loss; speaker-identification accuracy outside training."""
        scores, _ = predictions
        targets = batch.spk_id_encoded.data.to(self.device)  # (B, 1)
        loss = self.hparams.compute_cost(scores, targets)
        if stage != sb.Stage.TRAIN:
            self.accuracy.append(batch.id, scores.squeeze(1).argmax(-1), targets.squeeze(1))
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Fresh accuracy tracker for each validation."""
        if stage != sb.Stage.TRAIN:
            self.accuracy = ClassificationStats()

    def stage_stats(self, stage: sb.Stage) -> dict:
        """Speaker-identification accuracy on the validation chunks."""
        return {"accuracy": float(self.accuracy.summarize("accuracy"))}

    @torch.no_grad()
    def embed(self, dataset: DynamicItemDataset, loader_kwargs: dict) -> dict[str, torch.Tensor]:
        """Embedding ``(E,)`` of every utterance of ``dataset``, by ID."""
        self.modules.eval()
        embeddings = {}
        for batch in make_dataloader(dataset, **loader_kwargs):
            with self.evaluation_ctx:
                _, emb = self.compute_forward(batch, sb.Stage.TEST)  # (B, 1, E)
            embeddings.update(zip(batch.id, emb.squeeze(1).float().cpu(), strict=True))
        return embeddings

    def verify(
        self, enrol: DynamicItemDataset, test: DynamicItemDataset, trials_file: str | Path,
        loader_kwargs: dict,
    ) -> dict:
        """Load the best checkpoint, score every trial by cosine similarity and write EER and
        minDCF (``min_dcf_p_target``) with the layer weights."""
        self.on_evaluate_start(max_key=self.checkpoint_metric)
        embeddings = {**self.embed(enrol, loader_kwargs), **self.embed(test, loader_kwargs)}
        positives, negatives = [], []
        for number, line in enumerate(Path(trials_file).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            label, enrol_id, test_id = line.split()
            for utt in (enrol_id, test_id):
                if utt not in embeddings:
                    raise ValueError(f"{trials_file}:{number}: {utt!r} in no enrol/test manifest")
            score = torch.cosine_similarity(embeddings[enrol_id], embeddings[test_id], dim=0)
            (positives if label == "1" else negatives).append(float(score))
        if not positives or not negatives:
            raise ValueError(f"{trials_file}: expected target and non-target trials, got "
                             f"{len(positives)} and {len(negatives)}")
        positives_t, negatives_t = torch.tensor(positives), torch.tensor(negatives)
        eer, _ = EER(positives_t, negatives_t)
        min_dcf, _ = minDCF(positives_t, negatives_t, p_target=self.hparams.min_dcf_p_target)
        stats = {"EER": float(eer), "minDCF": float(min_dcf), "trials": len(positives + negatives)}
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
        )
        self.write_results(stats)
        return self.test_metrics


def dataio_prepare(hparams: dict) -> tuple[dict[str, DynamicItemDataset], int]:
    """Train/valid rows (a new random ``crop_seconds`` crop each read) with speaker labels,
    whole enrol/test utterances; number of speakers."""
    datasets = {
        split: load_manifest(hparams[f"{split}_csv"], hparams["sorting"], hparams["max_duration"])
        for split in ("train", "valid")
    }
    datasets.update(
        {split: load_manifest(hparams[f"{split}_csv"]) for split in ("enrol", "test")}
    )
    seconds, sample_rate = hparams["crop_seconds"], hparams["sample_rate"]

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def crop_pipeline(wav: str, start: str, stop: str) -> torch.Tensor:
        return random_crop(wav, int(start), int(stop), seconds, sample_rate)

    sb.dataio.dataset.add_dynamic_item([datasets["train"], datasets["valid"]], crop_pipeline)
    add_audio_pipeline([datasets["enrol"], datasets["test"]], sample_rate, offsets=True)
    speakers = add_label_pipeline(
        "spk_id", datasets["train"], {"valid": datasets["valid"]},
        Path(hparams["save_folder"]) / "spk_id_encoder.txt",
    )
    return datasets, len(speakers)


def main(argv: list[str] | None = None) -> dict:
    """Prepare VoxCeleb, train the speaker embedding, score the trials; return the metrics."""
    hparams, run_opts = load_recipe(__file__, argv)
    if hparams["cache_features"]:
        raise ValueError("expected cache_features: False for VoxCeleb, got True (training reads a "
                         "new random crop of each utterance every time)")
    run_on_main(
        prepare_voxceleb,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "trial_list": hparams["trial_list"],
            "crop_seconds": hparams["crop_seconds"],
            "valid_fraction": hparams["valid_fraction"],
            "skip_prep": hparams["skip_prep"],
            "verify_audio": hparams["verify_audio"],
        },
    )
    datasets, num_speakers = dataio_prepare(hparams)
    classifier = hparams["classifier"](out_neurons=num_speakers)
    hparams["checkpointer"].add_recoverable("classifier", classifier)
    brain = SpeakerBrain(
        modules={**hparams["modules"], "classifier": classifier},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    feature_key = brain.prepare_features(list(datasets.values()))
    for split, dataset in datasets.items():
        labels = ["spk_id_encoded"] if split in ("train", "valid") else []
        dataset.set_output_keys(["id", feature_key, *labels])
    brain.fit_splits(datasets)
    return brain.verify(
        datasets["enrol"], datasets["test"], hparams["trials_file"], hparams["test_dataloader_opts"]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
