"""``python -m resdet`` is the ``resdet`` command."""

from resdet.cli import app

app(prog_name="resdet")
