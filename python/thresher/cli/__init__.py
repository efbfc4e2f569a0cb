"""Command-line front door. Each ``cmd_*.py`` module in this package exposes
``register(subparsers)`` adding one verb; :mod:`thresher.cli.main` finds them."""
