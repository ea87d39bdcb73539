"""Data preparation: one module per corpus, each writing SpeechBrain CSV manifests.

Every ``prepare_*`` function reads the corpus in its published on-disk layout (ignoring the
``._*`` companion files of a copy made on a Mac), writes its manifests atomically, is idempotent
(a completed save folder is reused while the options and the corpus files it read, by path, size
and modification time, are unchanged), and raises :class:`data_prep.common.DataPrepError` naming
the file and line of any bad input. ``verify_audio=True`` decodes every audio file kept and
refuses unreadable or truncated ones before writing anything. Each module also runs from the
command line: ``python -m data_prep.<corpus> DATA_FOLDER SAVE_FOLDER [--verify-audio]``, which
prints a ``DataPrepError`` as one line and exits with status 1.
:mod:`data_prep.mini` synthesises small versions of all five corpora for tests. The generic I/O
helpers live here too (:mod:`data_prep.files`: atomic writes; :mod:`data_prep.audio`: audio
reading; :mod:`data_prep.audio_files`: lengths and decode checks of many files), so that this
package imports nothing from the model package ``summarymixing``, whose recipe support reads
audio and writes files through them.
"""
