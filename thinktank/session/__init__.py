"""A session as data: loading a file, the spec models, its checks, graph, model selection
and templates.

``loading`` sits on top (parse, ``--model``, selection, checks); below it ``spec`` (the
pydantic models), ``validation`` (every graph-level problem at once), ``graph`` (the DAG
a run schedules), ``selection`` and ``templates``. Everything here describes a session
before it runs; nothing here calls a model or the store.
"""
