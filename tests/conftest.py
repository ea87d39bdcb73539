"""Shared pytest fixtures.

``mini_corpora`` builds the synthetic mini corpora (see :mod:`data_prep.mini`) once per test
session. It returns the root folder, laid out as::

    root/librilight/small/...          prepare_librilight(root / "librilight", ..., split="small",
                                           valid_folder=root / "LibriSpeech" / "dev-clean")
    root/LibriSpeech/dev-clean/...
    root/cv-corpus-mini/cy/...         prepare_commonvoice(root / "cv-corpus-mini" / "cy", ...)
    root/slurp/...                     prepare_slurp(root / "slurp", ...)
    root/IEMOCAP_full_release/...      prepare_iemocap(root / "IEMOCAP_full_release", ...)
    root/voxceleb1/...                 prepare_voxceleb(root / "voxceleb1", ...)
    root/ground_truth.json             what the generator produced (labels, lengths, spans)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.mini import build_mini_corpora


@pytest.fixture(scope="session")
def mini_corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of the mini corpora, built once per test session (seed 0)."""
    root = tmp_path_factory.mktemp("mini_corpora")
    build_mini_corpora(root, seed=0)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module, its module-scoped fixtures included
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
