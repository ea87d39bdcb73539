"""Mini versions of the five corpora, synthesised with eSpeak NG in their published layouts.

Layout under ``out`` (each a real corpus' on-disk format, see ``shared/data_formats.md``)::

    librilight/small/<spk>/<book>/<file>.flac + <file>.json   6 speakers x 2 files of 20-30 s
    LibriSpeech/dev-clean/<spk>/<chapter>/...flac + .trans.txt 2 speakers x 3 utterances
    cv-corpus-mini/cy/clips/*.mp3 + train/dev/test/... .tsv   60 Welsh clips, 48 kHz (some 32 kHz)
    slurp/dataset/slurp/*.jsonl, slurp/slurp_real, slurp_synth 7 intents x 14 utterances
    IEMOCAP_full_release/Session{1..5}/...                     10 per emotion per session
    voxceleb1/wav/<id>/<video>/<n>.wav, veri_test2.txt, vox1_meta.csv   8 dev + 4 test speakers
    ground_truth.json                                          what was generated, for tests

Speakers are distinct eSpeak voice variants and pitches; emotions are distinct prosody (sad: low,
slow, narrow; angry: fast, loud, wide; happy: high, wide; neutral: mid); intents are distinct
command templates. The corpora hold junk that the preps must skip or reject like the real ones
(macOS ``._`` companion files beside the IEMOCAP, VoxCeleb, LibriLight and LibriSpeech files,
dropped emotion classes, an empty and an over-long CommonVoice prompt).
With the LibriLight defaults (10-30 s segments) the 20-30 s mini files give few segments; the mini
pre-training config uses ``min_duration=2, max_duration=6``.

Run ``python -m data_prep.mini --out DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.common import POOL_CONTEXT
from data_prep.mini_text import (
    EMOTION_PHRASES,
    HARVARD,
    SLURP_INTENTS,
    SLURP_SLOTS,
    WELSH,
    WELSH_LONG,
)
from data_prep.synth import Voice

logger = logging.getLogger(__name__)

SR = 16000
# What a macOS copy leaves beside every file ("._<name>", AppleDouble): not audio, not text.
RESOURCE_FORK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        junk"
# eSpeak variants without breath noise (which is not reproducible), alternating male/female.
EN_VARIANTS = ["m1", "f1", "m3", "f4", "m5", "linda", "m2", "belinda", "m4", "aunty", "m6", "Andy"]
FEMALE = {"f1", "f4", "linda", "belinda", "aunty"}
EMOTIONS = {  # prosody per IEMOCAP code: (rate, pitch, range, volume)
    "neu": (165, 50, 40, 100),
    "hap": (190, 75, 90, 120),
    "exc": (200, 80, 95, 130),
    "ang": (240, 55, 100, 190),
    "sad": (105, 22, 8, 60),
    "fru": (175, 45, 60, 140),
    "xxx": (170, 60, 50, 100),
}


def _save(path: Path, wav: np.ndarray, sample_rate: int = SR, **kwargs: str) -> int:
    """Write ``wav`` (float in [-1, 1]) to ``path`` and return its number of samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sample_rate, **kwargs)
    return len(wav)


def _silence(rng: random.Random, low: float, high: float) -> np.ndarray:
    return np.zeros(int(rng.uniform(low, high) * SR), dtype=np.float32)


def build_librilight(out: Path, rng: random.Random) -> dict:
    """LibriLight ``small`` split: long files with per-file JSON (``voice_activity`` in seconds).

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).
    """
    truth = {}
    for s in range(6):
        spk, book = str(100 + 37 * s), f"book{s}"
        voice = Voice(f"en+{EN_VARIANTS[s]}", pitch=30 + 8 * s)
        for f in range(2):
            pieces, spans = [_silence(rng, 0.3, 1.0)], []
            length = len(pieces[0])
            target = rng.uniform(20.0, 30.0) * SR
            while length < target:
                speech = voice.say(rng.choice(HARVARD))
                spans.append([length, length + len(speech)])
                pieces += [speech, _silence(rng, 0.4, 1.6)]
                length += len(speech) + len(pieces[-1])
            stem = f"{f + 1:02d}_{book}_64kb"
            rel = f"small/{spk}/{book}_librivox_64kb_mp3/{stem}.flac"
            frames = _save(out / "librilight" / rel, np.concatenate(pieces))
            meta = {
                "speaker": spk,
                "snr": round(rng.uniform(8.0, 20.0), 2),
                "voice_activity": [[a / SR, b / SR] for a, b in spans],
                "book_meta": {"id": str(1000 + s), "title": f"Book {s}", "language": "English"},
            }
            (out / "librilight" / rel).with_suffix(".json").write_text(json.dumps(meta, indent=1))
            (out / "librilight" / rel).with_name(f"._{stem}.flac").write_bytes(RESOURCE_FORK)
            truth[rel] = {"spk": spk, "frames": frames, "spans": spans}
    return truth


def build_librispeech(out: Path, rng: random.Random) -> dict:
    """LibriSpeech ``dev-clean``: flac utterances and one ``.trans.txt`` per chapter.

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> truth = build_librispeech(out, random.Random(0))
    >>> sorted(truth)[0], truth["84-121123-0000"]["spk"]
    ('174-50561-0000', '84')
    >>> (out / "LibriSpeech/dev-clean/84/121123/84-121123.trans.txt").read_text().count("\\n")
    3
    """
    truth = {}
    for s, (spk, chapter) in enumerate([("84", "121123"), ("174", "50561")]):
        voice = Voice(f"en-us+{EN_VARIANTS[6 + s]}", pitch=45 + 10 * s)
        folder = out / "LibriSpeech" / "dev-clean" / spk / chapter
        lines = []
        for u in range(3):
            text = rng.choice(HARVARD)
            utt = f"{spk}-{chapter}-{u:04d}"
            words = "".join(c for c in text.upper() if c.isalpha() or c in " '")
            frames = _save(folder / f"{utt}.flac", voice.say(text))
            lines.append(f"{utt} {words}\n")
            truth[utt] = {"spk": spk, "frames": frames, "wrd": words}
        (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))
        (folder / f"._{spk}-{chapter}.trans.txt").write_bytes(RESOURCE_FORK)
    return truth


CV_HEADER = (
    "client_id path sentence_id sentence sentence_domain up_votes down_votes age gender "
    "accents variant locale segment"
).split()


def build_commonvoice(out: Path, rng: random.Random) -> dict:
    """CommonVoice Welsh: 48 kHz mp3 clips (a few at 32 kHz) and the release's TSV files.

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).
    """
    root = out / "cv-corpus-mini" / "cy"
    clients = [f"{rng.getrandbits(128):032x}" for _ in range(6)]
    voices = [Voice(f"cy+{v}", pitch=35 + 7 * i) for i, v in enumerate(EN_VARIANTS[:6])]
    prompts = [(rng.choice(WELSH), i % 6) for i in range(60)]
    prompts[3] = ("", 3)  # an empty prompt in train: dropped by the prep
    prompts[7] = (WELSH_LONG, 1)  # over 10 s: filtered by the prep's default max_duration
    rows, durations, truth = {"train": [], "dev": [], "test": []}, [], {}
    for i, (text, c) in enumerate(prompts):
        split = "train" if i < 40 else "dev" if i < 50 else "test"
        clip = f"common_voice_cy_{18493457 + 11 * i}.mp3"
        rate = 32000 if i % 10 == 9 else 48000
        wav = voices[c].say(text or "helo", sample_rate=rate)
        _save(root / "clips" / clip, wav, rate, format="MP3", subtype="MPEG_LAYER_III")
        ms = round(sf.info(str(root / "clips" / clip)).duration * 1000)
        durations.append(f"{clip}\t{ms}\n")
        votes = (str(rng.randint(2, 4)), str(rng.randint(0, 1)))
        sid = f"{rng.getrandbits(64):016x}"
        fields = [clients[c], clip, sid, text, "", *votes, "", "", "", "", "cy", ""]
        rows[split].append("\t".join(fields) + "\n")
        truth[clip] = {"split": split, "sentence": text, "client_id": clients[c],
                       "sample_rate": rate, "seconds": len(wav) / rate}
    header = "\t".join(CV_HEADER) + "\n"
    for split, lines in rows.items():
        (root / f"{split}.tsv").write_text(header + "".join(lines), encoding="utf-8")
    (root / "validated.tsv").write_text(header + "".join(sum(rows.values(), [])))
    for name in ("invalidated.tsv", "other.tsv"):
        (root / name).write_text(header)
    (root / "reported.tsv").write_text("sentence_id\tsentence\tlocale\treason\n")
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\n" + "".join(durations))
    return truth


def _far_field(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crude far-field microphone: exponentially decaying reverberation, lower gain, noise."""
    taps = np.arange(int(0.15 * SR))
    ir = rng.standard_normal(len(taps)) * np.exp(-taps / (0.03 * SR))
    ir[0] = 1.0
    n = len(wav) + len(ir)
    wet = np.fft.irfft(np.fft.rfft(wav, n) * np.fft.rfft(ir, n), n)[: len(wav)]
    wet = 0.4 * wet / (np.abs(wet).max() + 1e-9) + 0.001 * rng.standard_normal(len(wav))
    return wet.astype(np.float32)


def _slurp_record(slurp_id: int, text: str, intent: str, files: list[str]) -> dict:
    scenario, action = intent.split("_", 1)
    tokens = [{"surface": w, "id": i, "lemma": w, "pos": "X"} for i, w in enumerate(text.split())]
    recordings = [{"file": f, "wer": 0.0, "ent_wer": 0.0, "status": "correct"} for f in files]
    return {
        "slurp_id": slurp_id, "sentence": text, "sentence_annotation": text, "intent": intent,
        "action": action, "scenario": scenario, "tokens": tokens, "entities": [],
        "recordings": recordings,
    }


def build_slurp(out: Path, rng: random.Random) -> dict:
    """SLURP: jsonl per split; every other utterance has a headset and a far-field recording.

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).
    """
    root, noise = out / "slurp", np.random.default_rng(rng.getrandbits(32))
    voices = [Voice(f"en+{v}", pitch=40 + 6 * i) for i, v in enumerate(EN_VARIANTS[:6])]
    lines, truth, stamp = {"train": [], "devel": [], "test": []}, {}, 1434542201
    for k, (intent, templates) in enumerate(sorted(SLURP_INTENTS.items())):
        for u in range(14):
            split = "devel" if u % 7 == 5 else "test" if u % 7 == 6 else "train"
            slots = {name: rng.choice(values) for name, values in SLURP_SLOTS.items()}
            text = templates[u % len(templates)].format(**slots)
            speech = voices[(u + k) % 6].say(text)
            files = [f"audio-{stamp}-headset.flac"]
            _save(root / "slurp_real" / files[0], speech)
            if u % 2:
                files.append(f"audio-{stamp + 1}.flac")
                _save(root / "slurp_real" / files[1], _far_field(speech, noise))
            stamp += 7
            lines[split].append(_slurp_record(1000 * k + u, text, intent, files))
            for f in files:
                truth[f] = {"split": split, "intent": intent, "sentence": text}
    synth = []
    for k, intent in enumerate(sorted(SLURP_INTENTS)):
        text = SLURP_INTENTS[intent][0].format(**{n: v[0] for n, v in SLURP_SLOTS.items()})
        name = f"audio--{1504190292 + k}-synth.flac"
        _save(root / "slurp_synth" / name, Voice("en-us", pitch=50).say(text))
        synth.append(_slurp_record(90000 + k, text, intent, [name]))
        truth[name] = {"split": "train_synthetic", "intent": intent, "sentence": text}
    lines["train_synthetic"] = synth
    for split, records in lines.items():
        body = "".join(json.dumps(r) + "\n" for r in records)
        path = root / "dataset" / "slurp" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return truth


def _emo_block(start: float, end: float, utt: str, code: str, rng: random.Random) -> str:
    vad = ", ".join(f"{rng.choice([1.5, 2.0, 2.5, 3.0, 3.5]):.4f}" for _ in range(3))
    word = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger",
            "sad": "Sadness", "fru": "Frustration", "xxx": "Other"}[code]
    return (
        f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[{vad}]\n"
        f"C-E1:\t{word};\t()\nC-E2:\t{word};\t()\nC-F1:\tNeutral state;\t()\n"
        f"A-E1:\tval 3; act 2; dom  3;\t()\nA-F1:\tval 2; act 3; dom  2;\t()\n\n"
    )


def build_iemocap(out: Path, rng: random.Random) -> dict:
    """IEMOCAP: 5 sessions x 2 speakers; EmoEvaluation files with summary and annotator lines.

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).
    """
    root, truth = out / "IEMOCAP_full_release", {}
    codes = ["neu"] * 10 + ["hap", "exc"] * 5 + ["ang"] * 10 + ["sad"] * 10 + ["fru", "xxx"] * 2
    for n in range(1, 6):
        session = root / f"Session{n}"
        order = list(range(len(codes)))
        rng.shuffle(order)
        for d, dialog in enumerate([f"Ses0{n}F_impro01", f"Ses0{n}M_script01_1"]):
            wav_dir = session / "sentences" / "wav" / dialog
            blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
            clock, counts = rng.uniform(1.0, 5.0), {"F": 0, "M": 0}
            for i in order[d::2]:
                code, gender = codes[i], "FM"[i % 2]
                utt = f"{dialog}_{gender}{counts[gender]:03d}"
                counts[gender] += 1
                rate, pitch, width, volume = EMOTIONS[code]
                variant = EN_VARIANTS[(2 * n + (gender == "F")) % 12]
                pitch_shift = 8 if gender == "F" else -8
                voice = Voice(f"en+{variant}", rate, pitch + pitch_shift, width, volume)
                frames = _save(wav_dir / f"{utt}.wav", voice.say(rng.choice(EMOTION_PHRASES)))
                blocks.append(_emo_block(clock, clock + frames / SR, utt, code, rng))
                clock += frames / SR + rng.uniform(0.5, 2.0)
                truth[utt] = {"session": n, "code": code, "spk": f"Ses0{n}{gender}",
                              "frames": frames}
            (wav_dir / f"._{dialog}_F000.wav").write_bytes(RESOURCE_FORK)
            emo_dir = session / "dialog" / "EmoEvaluation"
            emo_dir.mkdir(parents=True, exist_ok=True)
            (emo_dir / f"{dialog}.txt").write_text("".join(blocks))
            (emo_dir / f"._{dialog}.txt").write_bytes(RESOURCE_FORK)
            (emo_dir / "Categorical").mkdir(exist_ok=True)
            (emo_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
                f"{dialog}_F000 :Neutral state; ()\n"
            )
    return truth


def build_voxceleb(out: Path, rng: random.Random) -> dict:
    """VoxCeleb1: ``wav/<id>/<video>/<n>.wav``, ``veri_test2.txt`` and ``vox1_meta.csv``.

    Arguments
    ---------
    out : Path
        Folder in which the corpus folder is created.
    rng : random.Random
        Source of every random choice: the same state gives the same corpus.

    Returns
    -------
    dict
        This corpus' part of ``ground_truth.json`` (what was generated, per file or utterance).
    """
    root, truth = out / "voxceleb1", {}
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    speakers = [(f"id{10001 + i}", "dev") for i in range(8)]
    speakers += [(f"id{10270 + i}", "test") for i in range(4)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    # Test speakers sit between training speakers in pitch and rate, so that a speaker
    # embedding trained on the dev speakers has seen voices like theirs.
    slots = [0, 2, 3, 5, 6, 8, 9, 11] + [1, 4, 7, 10]
    for (spk, subset), s in zip(speakers, slots, strict=True):
        accent = ["en", "en-us", "en-gb-scotland", "en-029"][s % 4]
        voice = Voice(f"{accent}+{EN_VARIANTS[s]}", rate=150 + 5 * s, pitch=20 + 6 * s)
        gender = "f" if EN_VARIANTS[s] in FEMALE else "m"
        meta.append(f"{spk}\tCeleb_{s}\t{gender}\tUK\t{subset}")
        for _ in range(3 if subset == "dev" else 2):
            video = "".join(rng.choice(alphabet) for _ in range(11))
            for u in range(2):
                text = " ".join(rng.sample(HARVARD, 2))
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                frames = _save(root / "wav" / rel, voice.say(text))
                truth[rel] = {"spk": spk, "set": subset, "frames": frames}
            (root / "wav" / spk / video / "._00001.wav").write_bytes(RESOURCE_FORK)
    (root / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    tests = sorted(rel for rel, t in truth.items() if t["set"] == "test")
    trials = [
        f"{int(truth[a]['spk'] == truth[b]['spk'])} {a} {b}\n"
        for i, a in enumerate(tests)
        for b in tests[i + 1 :]
        if a.split("/")[1] != b.split("/")[1]
    ]
    (root / "veri_test2.txt").write_text("".join(trials))
    return truth


BUILDERS = {  # name: (builder, corpus root relative to ``out``)
    "librilight": (build_librilight, "librilight"),
    "librispeech": (build_librispeech, "LibriSpeech/dev-clean"),
    "commonvoice": (build_commonvoice, "cv-corpus-mini/cy"),
    "slurp": (build_slurp, "slurp"),
    "iemocap": (build_iemocap, "IEMOCAP_full_release"),
    "voxceleb": (build_voxceleb, "voxceleb1"),
}


def _build_one(job: tuple[str, str, int]) -> dict:
    name, out, seed = job
    return BUILDERS[name][0](Path(out), random.Random(seed))


def build_mini_corpora(out: Path, seed: int = 0) -> dict[str, Path]:
    """Build all mini corpora under ``out``; return each corpus' root folder.

    The roots are the folders the ``prepare_*`` functions take as ``data_folder`` (LibriLight:
    the folder holding the ``small`` split; LibriSpeech: ``dev-clean``). ``out/ground_truth.json``
    records what was generated (speakers, labels, sample counts, speech spans).

    eSpeak NG carries state from one utterance to the next (its waveform generator's phase), so
    each corpus is synthesised in a fresh spawned process: the same seed gives the same bytes,
    and the corpora build in parallel (about 10 s on 2 cores, 28 MB).

    Arguments
    ---------
    out : Path
        Folder to create the corpora in.
    seed : int
        Random seed: the same seed gives the same bytes.

    Returns
    -------
    dict[str, Path]
        The root folder of each corpus (``commonvoice``, ``iemocap``, ``librilight``,
        ``librispeech``, ``slurp``, ``voxceleb``).

    Example
    -------
    >>> import tempfile
    >>> roots = build_mini_corpora(Path(tempfile.mkdtemp()), seed=0)  # doctest: +SKIP
    >>> sorted(roots)  # doctest: +SKIP
    ['commonvoice', 'iemocap', 'librilight', 'librispeech', 'slurp', 'voxceleb']

    (Skipped as a doctest for time: ``tests/conftest.py``'s ``mini_corpora`` fixture runs it.)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng, start = random.Random(seed), time.perf_counter()
    jobs = [(name, str(out), rng.getrandbits(32)) for name in BUILDERS]
    workers = min(len(jobs), os.cpu_count() or 1)
    with POOL_CONTEXT.Pool(workers, maxtasksperchild=1) as pool:
        truth = dict(zip(BUILDERS, pool.map(_build_one, jobs, chunksize=1), strict=True))
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False))
    logger.info("Built mini corpora in %s in %.1f s", out, time.perf_counter() - start)
    return {name: out / rel for name, (_, rel) in BUILDERS.items()}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m data_prep.mini --out DIR [--seed N]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create the corpora in")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, root in build_mini_corpora(args.out, args.seed).items():
        print(f"{name}: {root}")


if __name__ == "__main__":
    main()
