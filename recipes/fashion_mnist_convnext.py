"""TRP on Fashion-MNIST: a small timm ConvNeXt on 1x28x28 images, trained from scratch.

timm's ConvNeXt (``convnext_atto`` resized by ``model_kwargs``, which travel in the
checkpoint's ``config.json``) with ``conv_mlp=False``: each block's MLP is a pair of
``nn.Linear`` on channels-last maps. At 28x28 the ImageNet layout (a 4x4 patch stem, then
7, 3, 1 and 0 pixels) has nothing left to see, so the stem is a 1x1 conv (``patch_size=1``)
and the four stages see 28x28, 14x14, 7x7 and 3x3 maps (widths 16 to 128, depths 1-1-2-1;
a 3x3 depthwise kernel on the last). TRP trains the MLP Linears and the 2x2 downsampling
convs low-rank; the stem, the depthwise convs and the head stay dense.
An epoch of the 60k training images takes about 3 minutes on 2 CPU cores with TRP on
(178 s measured, 2026-12-02).

Optimizer: ConvNeXt's own recipe, scaled to this size: AdamW (decoupled weight decay
0.05, none on biases and norms), lr 1e-3 for batch 128 with a 1-epoch warmup and a cosine
decay to 1e-5, label smoothing 0.1; LayerNorm and layer scale train poorly with SGD.

    python recipes/fashion_mnist_convnext.py --epochs 10 --output-dir runs/fmnist_convnext
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="convnext_atto",
    model_kwargs={
        "depths": [1, 1, 2, 1],
        "dims": [16, 32, 64, 128],
        "patch_size": 1,
        "kernel_sizes": [7, 7, 7, 3],
        "conv_mlp": False,
    },
    dataset="fashion_mnist",
    layers="all",
    scheme="channel",
    energy=0.98,
    period=20,
    nuclear_weight=3e-4,
    epochs=10,
    batch_size=128,
    opt="adamw",
    lr=1e-3,
    weight_decay=0.05,
    sched="cosine",
    warmup_epochs=1,
    min_lr=1e-5,
    label_smoothing=0.1,
    output_dir="runs/fashion_mnist_convnext",
    model_name="convnext_trp_{scheme}_fmnist",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/fashion_mnist_convnext.py", __doc__, target_planner=plan_for_target)
