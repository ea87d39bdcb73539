"""CommonVoice ASR from scratch: a SummaryMixing Conformer (or Branchformer) CTC + attention model.

SpeechBrain's ``TransformerASR`` conventions (its CommonVoice / LibriSpeech Conformer recipes):
Fbank features, global ``InputNormalization``, SpecAugment-style ``fea_augment`` in training, the
``ConvolutionFrontEnd`` CNN (4x subsampling), ``summarymixing.asr.TransformerASR`` (a SpeechBrain
``TransformerASR`` whose encoder mixes with SummaryMixing), a linear CTC head (``ctc_lin``) and a
Transformer decoder head (``seq_lin``), trained on ``ctc_weight * CTC + (1 - ctc_weight) * KL``
(label-smoothed) with AdamW and the Noam schedule (one step per applied optimizer step).
Validation decodes with the YAML's ``valid_search`` every ``valid_search_interval`` epochs, the
test with ``test_search`` (``S2STransformerBeamSearcher`` with a CTC scorer) and CTC greedy
decoding; WER and CER (``ErrorRateStats``) and the decoder's accuracy go to ``train_log`` and the
test statistics to ``metrics_file``. Checkpoints keep the best validation accuracy, which the
test loads.

``streaming: True`` trains with Dynamic Chunk Training (``dynchunktrain_config_sampler``, a
``DynChunkTrainConfigRandomSampler``: random chunk sizes and left contexts per batch, as
SpeechBrain's streaming Conformer recipes); its ``valid_config`` / ``test_config`` chunk the
encoder for evaluation too, and the model then streams with ``encode_streaming``.

Data: any CommonVoice language folder, prepared by ``data_prep.commonvoice`` (``train.csv``,
``valid.csv``, ``test.csv``); clips longer than ``max_duration`` leave the training set only.
Tokens: a SentencePiece model trained on the training transcripts (``bos_index`` / ``eos_index``
its BOS and EOS ids; index 0, its unknown piece, is the CTC blank and the padding).

Run, with the project installed (``make venv`` or ``pip install -e .``)::

    python recipes/asr/train.py hparams/asr/conformer_summarymixing.yaml \\
        --data_folder=/data/cv-corpus-15.0-2023-09-08/cy
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.tokenizers.SentencePiece import SentencePiece
from speechbrain.utils.data_utils import undo_padding
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.commonvoice import prepare_commonvoice
from summarymixing.downstream.data import add_audio_pipeline, load_manifest, loader_options
from summarymixing.downstream.reporting import write_metrics
from summarymixing.recipe import load_recipe
from summarymixing.training import GuardedBrain

logger = logging.getLogger(__name__)


class ASRBrain(GuardedBrain):
    """CTC + attention training of ``TransformerASR`` (see the module docstring); the
    non-finite guard of :class:`summarymixing.training.GuardedBrain`."""

    def __init__(self, *args: Any, tokenizer: SentencePiece, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.test_metrics: dict = {}

    def compute_forward(self, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage) -> tuple:
        """CTC and decoder log-probabilities, relative lengths and, when this stage decodes,
        the beam search's hypotheses (token ids)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos
        feats = self.hparams.compute_features(wavs)  # (B, T, n_mels)
        feats = self.modules.normalize(feats, wav_lens, epoch=self.hparams.epoch_counter.current)
        if stage == sb.Stage.TRAIN and self.hparams.fea_augment is not None:
            feats, wav_lens = self.hparams.fea_augment(feats, wav_lens)
            tokens_bos = self.hparams.fea_augment.replicate_labels(tokens_bos)

        src = self.modules.CNN(feats)  # (B, T / 4, C, F / 4)
        chunking = None  # Dynamic Chunk Training: a random configuration per training batch
        if self.hparams.streaming:
            chunking = self.hparams.dynchunktrain_config_sampler(stage)
        enc_out, pred = self.modules.Transformer(
            src, tokens_bos, wav_lens, pad_idx=self.hparams.pad_index,
            dynchunktrain_config=chunking,
        )  # (B, T / 4, d_model), (B, U + 1, d_model)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(enc_out))
        p_seq = self.hparams.log_softmax(self.modules.seq_lin(pred))

        hyps = None
        if stage == sb.Stage.VALID and self._decodes(stage):
            hyps, _, _, _ = self.hparams.valid_search(enc_out.detach(), wav_lens)
        elif stage == sb.Stage.TEST:
            hyps, _, _, _ = self.hparams.test_search(enc_out.detach(), wav_lens)
        return p_ctc, p_seq, wav_lens, hyps

    def _decodes(self, stage: sb.Stage) -> bool:
        """Whether this stage decodes: every test, validation every ``valid_search_interval``
        epochs."""
        if stage == sb.Stage.TEST:
            return True
        return self.hparams.epoch_counter.current % self.hparams.valid_search_interval == 0

    def compute_objectives(
        self, predictions: tuple, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        """``ctc_weight * CTC + (1 - ctc_weight) * KL``; accuracy and error rates outside
        training."""
        p_ctc, p_seq, wav_lens, hyps = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        tokens, tokens_lens = batch.tokens
        if stage == sb.Stage.TRAIN and self.hparams.fea_augment is not None:
            tokens_eos, tokens_eos_lens, tokens, tokens_lens = (
                self.hparams.fea_augment.replicate_multiple_labels(
                    tokens_eos, tokens_eos_lens, tokens, tokens_lens
                )
            )
        loss_seq = self.hparams.seq_cost(p_seq, tokens_eos, length=tokens_eos_lens)
        loss_ctc = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        loss = self.hparams.ctc_weight * loss_ctc + (1 - self.hparams.ctc_weight) * loss_seq

        if stage != sb.Stage.TRAIN:
            self.acc_metric.append(p_seq, tokens_eos, tokens_eos_lens)
            targets = [self._words(ids) for ids in undo_padding(tokens, tokens_lens)]
            if hyps is not None:
                words = [self._words(ids) for ids in hyps]
                self.wer_metric.append(batch.id, words, targets)
                self.cer_metric.append(batch.id, words, targets)
            if stage == sb.Stage.TEST:
                greedy = ctc_greedy_decode(p_ctc, wav_lens, blank_id=self.hparams.blank_index)
                self.ctc_wer_metric.append(batch.id, [self._words(ids) for ids in greedy], targets)
        return loss

    def _words(self, ids: list[int]) -> list[str]:
        return self.tokenizer.sp.decode_ids([int(i) for i in ids]).split()

    def on_fit_batch_end(
        self, batch: Any, outputs: Any, loss: torch.Tensor, should_step: bool
    ) -> None:
        """Advance the Noam schedule after every applied optimizer step."""
        if should_step and self.step_applied:
            self.hparams.noam_annealing(self.optimizer)

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Fresh accuracy and error-rate trackers outside training."""
        if stage != sb.Stage.TRAIN:
            self.acc_metric = self.hparams.acc_computer()
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()
            self.ctc_wer_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the statistics; checkpoint on validation (best accuracy kept); write the test
        statistics to ``metrics_file``."""
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["ACC"] = float(self.acc_metric.summarize())
        if self._decodes(stage):
            stats["WER"] = float(self.wer_metric.summarize("error_rate"))
            stats["CER"] = float(self.cer_metric.summarize("error_rate"))
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.hparams.noam_annealing.current_lr,
                            "steps": self.optimizer_step, "nonfinite": self.nonfinite_count},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"ACC": stats["ACC"], "epoch": epoch}, max_keys=["ACC"],
                num_to_keep=self.hparams.num_checkpoints_to_keep,
            )
            return
        stats["WER_ctc_greedy"] = float(self.ctc_wer_metric.summarize("error_rate"))
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
        )
        self.test_metrics = {"test": stats}
        if if_main_process():
            with open(self.hparams.test_wer_file, "w", encoding="utf-8") as out:
                self.wer_metric.write_stats(out)
            write_metrics(self.hparams.metrics_file, self.test_metrics)


def dataio_prepare(hparams: dict, tokenizer: SentencePiece) -> dict[str, DynamicItemDataset]:
    """Datasets of the three splits with ``sig`` and the token sequences ``tokens_bos``
    (BOS + tokens, the decoder's input), ``tokens_eos`` (tokens + EOS, its target) and
    ``tokens`` (CTC's target). Only the training set drops clips longer than ``max_duration``
    and follows ``sorting``; validation and test keep every clip, sorted by duration."""
    datasets = {
        "train": load_manifest(hparams["train_csv"], hparams["sorting"], hparams["max_duration"]),
        "valid": load_manifest(hparams["valid_csv"], "ascending"),
        "test": load_manifest(hparams["test_csv"], "ascending"),
    }
    add_audio_pipeline(datasets.values(), hparams["sample_rate"])
    bos, eos = hparams["bos_index"], hparams["eos_index"]

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens_bos", "tokens_eos", "tokens")
    def text_pipeline(wrd: str) -> Iterator[torch.Tensor]:
        ids = tokenizer.sp.encode_as_ids(wrd)
        if not ids:
            raise ValueError(f"expected a non-empty transcript, got {wrd!r}")
        yield torch.LongTensor([bos, *ids])
        yield torch.LongTensor([*ids, eos])
        yield torch.LongTensor(ids)

    splits = list(datasets.values())
    sb.dataio.dataset.add_dynamic_item(splits, text_pipeline)
    sb.dataio.dataset.set_output_keys(splits, ["id", "sig", "tokens_bos", "tokens_eos", "tokens"])
    return datasets


def main(argv: list[str] | None = None) -> dict:
    """Prepare CommonVoice, train the tokenizer and the model, decode the test split with the
    best checkpoint; return the test metrics."""
    hparams, run_opts = load_recipe(__file__, argv)
    run_on_main(
        prepare_commonvoice,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "max_duration": None,  # long clips leave the training set only (dataio_prepare)
            "text_normalization": hparams["text_normalization"],
            "min_words": hparams["min_words"],
            "skip_prep": hparams["skip_prep"],
            "verify_audio": hparams["verify_audio"],
        },
    )
    run_on_main(hparams["tokenizer"])  # trains the SentencePiece model once, on train.csv
    tokenizer = hparams["tokenizer"]()
    if tokenizer.sp.vocab_size() > hparams["output_neurons"]:
        raise ValueError(
            f"expected a vocabulary of at most output_neurons={hparams['output_neurons']} "
            f"tokens, got {tokenizer.sp.vocab_size()} from the tokenizer"
        )
    datasets = dataio_prepare(hparams, tokenizer)
    brain = ASRBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        tokenizer=tokenizer,
    )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=loader_options(
            datasets["train"], hparams["train_dataloader_opts"], hparams["dynamic_batching"]
        ),
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"], max_key="ACC", test_loader_kwargs=hparams["test_dataloader_opts"]
    )
    return brain.test_metrics


if __name__ == "__main__":
    main(sys.argv[1:])
