#!/usr/bin/env bash
# The GPU paths in one short run, under 8 minutes on one GPU. First real CLI runs on tiny
# generated data (CUDA, bf16 and fp16 AMP, channels_last, detection with masks, an exact
# resume, DDP over NCCL under torchrun with as many processes as GPUs, one included), then
# tools/gpu_check.py, which proves DDP ran and measures resdet against bare torchvision
# (ResNet-50 training, the loader, nvjpeg, detection steps) and prints its results as the
# last line, one JSON object. Needs resdet installed with a CUDA build of torch.
# Usage: bash tools/gpu_check.sh [--smoke] [OUT_DIR]
#   --smoke: gpu_check.py alone on CPU with gloo and tiny sizes (the test suite runs this)
set -euo pipefail
smoke=""
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
out=${1:-$(mktemp -d)}
check="$(cd "$(dirname "$0")" && pwd)/gpu_check.py"
launch="python -m torch.distributed.run --standalone"
if [[ -n $smoke ]]; then
  exec $launch --nproc_per_node 1 "$check" --smoke --out "$out"
fi
export RESDET_HOME="$out/home"
cd "$out"
gpus=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.device_count())")
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
python - <<'EOF'
from resdet.data.synthetic import write_bright_dark_folder, write_tiny_coco
write_bright_dark_folder("bd")
write_tiny_coco("coco", n_images=8, with_masks=True)
EOF
cls="--iters 20 --batch-size 16 --device cuda --set model.name=cifar_resnet20 --set data.views.crop=32
     --set data.views.train_scale=[32,40] --set data.views.test_size=32 --set data.views.lighting_std=0
     --set train.eval_period=10"
for amp in bf16 fp16; do
  resdet train-cls folder:bd --out "cls-$amp" $cls --set train.amp=$amp --set train.channels_last=true
done
resdet train-cls folder:bd --out cls-nvjpeg $cls --set data.decode=gpu --set data.workers=2
det="--backbone resnet18 --device cuda --batch-size 4 --set model.backbone_weights=null
     --set data.sizes.min_size=[120] --set data.sizes.max_size=160 --set train.eval_period=0"
resdet train-det coco --data-dir coco --head fpn --task segm --iters 10 --out det-fpn $det
resdet train-det coco --data-dir coco --head c4 --iters 6 --out det-c4 $det --set train.checkpoint_period=3
resdet train-det coco --resume det-c4/last.pt --iters 12
resdet eval --checkpoint det-fpn/last.pt --json det-fpn/eval-again.json
$launch --nproc_per_node "$gpus" -m resdet train-cls folder:bd --out cls-ddp $cls --set train.amp=bf16
echo "gpu_check: all CLI paths ran ($gpus GPU(s)); files in $out; measuring on one GPU" >&2
$launch --nproc_per_node 1 "$check" --out "$out/measure"
