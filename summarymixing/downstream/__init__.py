"""Downstream evaluation of a pre-trained wav2vec 2.0 encoder (MP3S protocol).

Shared by the recipes under ``recipes/{asr_commonvoice,slurp,iemocap,voxceleb}``:

- :mod:`~summarymixing.downstream.layers`: the frozen / fine-tuned encoder wrapper ``HiddenStates``
  and the softmax ``WeightedLayerSum`` (the encoder itself is loaded by ``pretrained_path`` with
  ``summarymixing.export.load_pretrained``);
- :mod:`~summarymixing.downstream.cache`: frozen features precomputed to disk;
- :mod:`~summarymixing.downstream.data`: manifests, audio and label pipelines, loaders;
- :mod:`~summarymixing.downstream.brain`: the ``sb.Brain`` base class;
- :mod:`~summarymixing.downstream.classification`: the utterance classification Brain and
  heads the SLURP and IEMOCAP recipes run;
- :mod:`~summarymixing.downstream.reporting`: metrics JSON and layer-weights PNG.
"""

from summarymixing.downstream.layers import HiddenStates, WeightedLayerSum

__all__ = ["HiddenStates", "WeightedLayerSum"]
