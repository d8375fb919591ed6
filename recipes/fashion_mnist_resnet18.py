"""TRP on Fashion-MNIST: timm resnet18 with one input channel at 28x28 (the default demo).

Trains with TRP, decomposes with the ranks training reached, evaluates the decomposed
model without fine-tuning and saves it. Runs on a 2-core CPU; torchrun for more.

    python recipes/fashion_mnist_resnet18.py --epochs 4 --output-dir runs/fmnist
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="resnet18",
    dataset="fashion_mnist",
    scheme="channel",
    energy=0.98,
    period=20,
    nuclear_weight=3e-4,
    epochs=10,
    batch_size=128,
    lr=0.1,
    weight_decay=5e-4,
    sched="cosine",
    output_dir="runs/fashion_mnist_resnet18",
    model_name="resnet18_trp_{scheme}_fmnist",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/fashion_mnist_resnet18.py", __doc__, target_planner=plan_for_target)
