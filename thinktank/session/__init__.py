"""A session as data: the spec (pydantic), its graph, model selection and templates.

Everything here describes a session before it runs; nothing here calls a model or the
store.
"""
