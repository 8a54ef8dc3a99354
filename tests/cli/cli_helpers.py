"""Running the real Typer app in-process (imported by the CLI tests by its bare name)."""

from typer.testing import CliRunner, Result

from resdet.cli import app

runner = CliRunner()


def invoke(*args: object) -> Result:
    """Run ``resdet ARGS...`` and require success, showing the output when it fails."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result
