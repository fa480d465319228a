"""``python -m thinktank``: the command line."""

from __future__ import annotations

from thinktank.cli.commands import main

if __name__ == "__main__":
    main()
