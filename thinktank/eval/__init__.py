"""Experiments over models, modes and thresholds (issue #14, being built).

The building blocks, each usable on its own: datasets (``thinktank.eval.dataset``),
scorers (``thinktank.eval.scoring``), statistics (``thinktank.eval.stats``), the
experiment file (``thinktank.eval.experiment``); the runner that stores every item x
configuration x repeat as a session (``thinktank.eval.runner``, ``thinktank eval FILE``)
and the loader that reads an experiment back as records (``thinktank.eval.store_read``).
"""
