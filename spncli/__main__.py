"""``python -m spncli`` runs the CLI."""

from .cli import main

main()
