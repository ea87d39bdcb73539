"""CommonVoice Welsh ASR with a frozen (or fine-tuned) pre-trained wav2vec 2.0 encoder.

MP3S protocol as the authors ran it: a learned softmax-weighted sum of all hidden states feeds a
2-layer BiLSTM and a linear CTC output over a SentencePiece vocabulary trained on the training
transcripts (plus a CTC blank, the last index). Clips longer than ``max_duration`` are left out
of training only (validation and test keep every clip). Validation and test decode greedily: the
reported ``WER``/``CER``. With ``beam_size`` set, the test split is also decoded with CTC beam
search (no language model): ``WER_beam``/``CER_beam``, an extra metric. Both go to
``metrics_file``.

Run, with the project installed (``make venv`` or ``pip install -e .``)::

    python recipes/asr_commonvoice/train.py hparams/asr_commonvoice/train.yaml \\
        --data_folder=/data/cv-corpus-15.0-2023-09-08/cy --pretrained_path=/models/w2v2.pt
"""

from __future__ import annotations

import logging
import sys

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.decoders.ctc import CTCBeamSearcher
from speechbrain.utils.data_utils import undo_padding
from speechbrain.utils.distributed import run_on_main

from data_prep.commonvoice import prepare_commonvoice
from summarymixing.downstream.brain import DownstreamBrain
from summarymixing.downstream.data import add_audio_pipeline, load_manifest
from summarymixing.recipe import load_recipe

logger = logging.getLogger(__name__)


class ASRBrain(DownstreamBrain):
    """BiLSTM + CTC head; WER/CER with greedy decoding, and beam search at test time when the
    YAML's ``beam_size`` is not ``null``."""

    checkpoint_metric = "WER"
    higher_is_better = False
    target_keys = ("tokens",)

    def __init__(self, *args, tokenizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.blank_index = tokenizer.sp.vocab_size()
        vocab = [tokenizer.sp.id_to_piece(i) for i in range(self.blank_index)] + ["<blank>"]
        self.beam_searcher = None
        if self.hparams.beam_size is not None:
            self.beam_searcher = CTCBeamSearcher(
                blank_index=self.blank_index, vocab_list=vocab, beam_size=self.hparams.beam_size
            )

    def compute_forward(self, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage) -> tuple:
        """CTC log-probabilities ``(B, T, V + 1)`` and relative lengths ``(B,)``."""
        feats, lens = self.features(batch, stage)  # (B, T, D)
        logits = self.modules.ctc_output(self.modules.head(feats, lens))  # (B, T, V + 1)
        return torch.log_softmax(logits, dim=-1), lens

    def compute_objectives(
        self, predictions: tuple, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        """CTC loss; error rates outside training."""
        log_probs, lens = predictions
        tokens, token_lens = batch.tokens
        tokens, token_lens = tokens.to(self.device), token_lens.to(self.device)
        loss = sb.nnet.losses.ctc_loss(log_probs, tokens, lens, token_lens, self.blank_index)
        if stage != sb.Stage.TRAIN:
            # References pass through the tokenizer as the hypotheses do (SentencePiece may
            # normalise characters), as the authors score: decoded reference token ids.
            targets = [self.tokenizer.sp.decode_ids(ids).split()
                       for ids in undo_padding(tokens, token_lens)]
            greedy = ctc_greedy_decode(log_probs, lens, blank_id=self.blank_index)
            hyps = [self.tokenizer.sp.decode_ids(ids).split() for ids in greedy]
            self.error_stats["greedy"][0].append(batch.id, hyps, targets)
            self.error_stats["greedy"][1].append(batch.id, hyps, targets)
            if stage == sb.Stage.TEST and self.beam_searcher is not None:
                beams = self.beam_searcher(log_probs.float(), lens)
                hyps = [best[0].text.split() for best in beams]
                self.error_stats["beam"][0].append(batch.id, hyps, targets)
                self.error_stats["beam"][1].append(batch.id, hyps, targets)
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Fresh (WER, CER) trackers for greedy and, at test time, beam-search decoding."""
        if stage != sb.Stage.TRAIN:
            decodings = ["greedy"]
            if stage == sb.Stage.TEST and self.beam_searcher is not None:
                decodings.append("beam")
            self.error_stats = {
                name: (sb.utils.metric_stats.ErrorRateStats(),
                       sb.utils.metric_stats.ErrorRateStats(split_tokens=True))
                for name in decodings
            }

    def stage_stats(self, stage: sb.Stage) -> dict:
        """``WER``/``CER`` (greedy, in %: the reported numbers) and, at test time with a beam
        searcher, ``WER_beam``/``CER_beam``."""
        stats = {}
        for name, (wer, cer) in self.error_stats.items():
            suffix = "" if name == "greedy" else f"_{name}"
            stats[f"WER{suffix}"] = float(wer.summarize("error_rate"))
            stats[f"CER{suffix}"] = float(cer.summarize("error_rate"))
        return stats


def dataio_prepare(hparams: dict, tokenizer: object) -> dict[str, DynamicItemDataset]:
    """Datasets of the three splits with audio, words and SentencePiece token ids.

    Only the training set drops clips longer than ``max_duration`` and follows ``sorting``;
    validation and test keep every clip, sorted by ascending duration (as the authors; the order
    only changes the padding, which no result depends on).
    """
    datasets = {
        "train": load_manifest(hparams["train_csv"], hparams["sorting"], hparams["max_duration"]),
        "valid": load_manifest(hparams["valid_csv"], "ascending"),
        "test": load_manifest(hparams["test_csv"], "ascending"),
    }
    add_audio_pipeline(datasets.values(), hparams["sample_rate"])

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(wrd: str) -> torch.Tensor:
        ids = tokenizer.sp.encode_as_ids(wrd)
        if not ids:
            raise ValueError(f"expected a non-empty transcript, got {wrd!r}")
        return torch.LongTensor(ids)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), text_pipeline)
    return datasets


def main(argv: list[str] | None = None) -> dict:
    """Prepare CommonVoice, train the tokenizer and the CTC head, decode the test split;
    return the metrics."""
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
    datasets = dataio_prepare(hparams, tokenizer)
    ctc_output = hparams["ctc_output"](n_neurons=tokenizer.sp.vocab_size() + 1)  # + blank
    hparams["checkpointer"].add_recoverable("ctc_output", ctc_output)
    brain = ASRBrain(
        modules={**hparams["modules"], "ctc_output": ctc_output},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        tokenizer=tokenizer,
    )
    return brain.fit_and_test(datasets)


if __name__ == "__main__":
    main(sys.argv[1:])
