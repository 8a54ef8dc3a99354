"""Running the real Typer app in-process (imported by the CLI tests by its bare name)."""

from typer.testing import CliRunner, Result

from resdet.cli import app

runner = CliRunner()

# Small everything: 120x160 images at their own size, few proposals, a narrow box head.
TINY_DET = [
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-amp",
    "--batch-size",
    "2",
    "--set",
    "data.sizes.min_size=[120]",
    "--set",
    "data.sizes.max_size=160",
    "--set",
    "model.backbone_weights=null",
    "--set",
    "model.rpn.pre_nms_top_n_train=100",
    "--set",
    "model.rpn.post_nms_top_n_train=50",
    "--set",
    "model.rpn.pre_nms_top_n_test=50",
    "--set",
    "model.rpn.post_nms_top_n_test=30",
    "--set",
    "model.roi_heads.batch_size_per_image=32",
    "--set",
    "model.roi_heads.box_head_width=64",
    "--set",
    "model.roi_heads.score_thresh=0.0",
    "--set",
    "train.log_period=1",
    "--set",
    "train.checkpoint_period=2",
    "--set",
    "optim.warmup=none",
    "--set",
    "optim.lr=0.005",
    "--set",
    "optim.steps=[]",
]


def output_text(result: Result) -> str:
    """The output with the console's line wrapping undone (words joined by single spaces)."""
    return " ".join(result.output.split())


def invoke(*args: object) -> Result:
    """Run ``resdet ARGS...`` and require success, showing the output when it fails."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result
