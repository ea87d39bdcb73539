"""Data preparation: one module per corpus, each writing SpeechBrain CSV manifests.

Every ``prepare_*`` function reads the corpus in its published on-disk layout, writes its
manifests atomically, is idempotent (a completed save folder with the same options is reused), and
raises :class:`data_prep.common.DataPrepError` naming the file and line of any bad input. Each
module also runs from the command line: ``python -m data_prep.<corpus> DATA_FOLDER SAVE_FOLDER``.
:mod:`data_prep.mini` synthesises small versions of all five corpora for tests. The generic I/O
helpers live here too (:mod:`data_prep.files`: atomic writes; :mod:`data_prep.audio`: audio
reading), so that this package imports nothing from the model package ``summarymixing``, whose
recipe support reads audio and writes files through them.
"""
