"""The `thinktank` command: its commands, tables and live progress.

Nothing in the library imports this package; `thinktank.cli.commands:main` is the entry
point.
"""
