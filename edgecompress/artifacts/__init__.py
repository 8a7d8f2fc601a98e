"""Artifacts: what edgecompress reads and writes as files, all loadable without running code.

* :mod:`~edgecompress.artifacts.checkpoint`: base-model checkpoints (state_dict + JSON spec);
* :mod:`~edgecompress.artifacts.compressed`: compressed models (``model.pt``: spec, policy, weights);
* :mod:`~edgecompress.artifacts.archive`: the packed archive whose size is the reported stored size;
* :mod:`~edgecompress.artifacts.export`: deployable files (ONNX fp32 / fp16 / int8, TorchScript,
  archive), verified before they are kept.
"""

__all__: list[str] = []
