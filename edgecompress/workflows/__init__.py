"""Workflows: what each command does, end to end (run, train, search, replay, report).

Each module composes the layers below (data, models, compressors, latency,
training, artifacts, the search core and its drivers) into one job that
writes a self-describing folder; the CLI only parses flags and renders.

* :mod:`~edgecompress.workflows.config`: the run config with the installed devices checked;
* :mod:`~edgecompress.workflows.train`: train or load the base model;
* :mod:`~edgecompress.workflows.run`: the main job (``edgecompress run``);
* :mod:`~edgecompress.workflows.search`: config -> search core -> driver;
* :mod:`~edgecompress.workflows.replay`: rebuild a policy, fine-tune, evaluate, report;
* :mod:`~edgecompress.workflows.report`: best policies and Pareto fronts across runs;
* :mod:`~edgecompress.workflows.api`: ``search_policy``, the whole search in one Python call.
"""

__all__: list[str] = []
