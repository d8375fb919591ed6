"""TRP on ImageNet: timm convnext_tiny, with the settings of imagenet_deit_small.py.

Starts from dense weights (``--pretrained``; default timm's ConvNeXt-T on the Hugging
Face Hub) and fine-tunes with TRP for 10 epochs with AdamW (ConvNeXt's own optimizer) at
lr 5e-5, a tenth of ConvNeXt-T's peak lr for a global batch of 512 (8 x 64). TRP trains
the MLP Linears of every block and the 2x2 downsampling convs low-rank; the stem, the
depthwise convs and the classifier stay dense.

    torchrun --nproc_per_node=8 recipes/imagenet_convnext_tiny.py --data-dir /data/imagenet
"""

import dataclasses

from imagenet_deit_small import DEFAULTS as DEIT_SMALL

from runtime.train_target import plan_for_target
from trp_zoo.train.recipe import main

DEFAULTS = dataclasses.replace(
    DEIT_SMALL,
    model="convnext_tiny",
    pretrained="hf-hub:timm/convnext_tiny.fb_in1k",
    channels_last=True,
    output_dir="runs/imagenet_convnext_tiny",
    model_name="convnext_tiny_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/imagenet_convnext_tiny.py", __doc__, target_planner=plan_for_target)
