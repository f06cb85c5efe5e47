"""`python -m fairdiff` runs the CLI."""

from fairdiff.cli import app

app()
