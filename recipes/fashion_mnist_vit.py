"""TRP on Fashion-MNIST: a small timm ViT on 1x28x28 images, trained from scratch.

timm's ``vit_tiny_patch16_224`` resized by ``model_kwargs`` (they travel in the
checkpoint's ``config.json``): 4x4 patches (a 7x7 grid of tokens plus the class token),
width 96, 4 blocks of 3 heads. TRP trains every Linear low-rank (``qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``); the patch embedding (the stem) and the head stay dense.
An epoch of the 60k training images takes about 2.5 minutes on 2 CPU cores with TRP on
(141 s measured, 2026-12-02).

Optimizer: a ViT from scratch has no convolutional prior and trains badly with SGD at
lr 0.1, so the defaults are the DeiT recipe's, scaled to this size: AdamW (per-weight step
sizes suit the very different gradient scales of embeddings, attention and MLPs; decoupled
weight decay 0.05, none on biases, norms and position embeddings), lr 1e-3 for batch 128
with a 1-epoch linear warmup (Adam's second moments and the attention softmax are noisy
in the first steps) and a cosine decay to 1e-5, label smoothing 0.1.

    python recipes/fashion_mnist_vit.py --epochs 10 --output-dir runs/fmnist_vit
    python recipes/fashion_mnist_vit.py --model-kwargs depth=6 embed_dim=192 num_heads=3
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="vit_tiny_patch16_224",
    model_kwargs={"img_size": 28, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
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
    output_dir="runs/fashion_mnist_vit",
    model_name="vit_trp_{scheme}_fmnist",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/fashion_mnist_vit.py", __doc__, target_planner=plan_for_target)
