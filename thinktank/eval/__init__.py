"""Experiments over models, modes and thresholds (issue #14, being built).

What exists so far are the building blocks, each usable on its own: datasets
(``thinktank.eval.dataset``), scorers (``thinktank.eval.scoring``) and statistics
(``thinktank.eval.stats``). There is no ``thinktank eval`` command yet.
"""
