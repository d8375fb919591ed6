"""A factorized ViT through the runtime: ONNX export and an ONNX Runtime engine."""

import onnx
import timm
import torch

import trp_zoo
from runtime import build
from runtime.export import export_onnx
from tests.tiny_timm import ARCHITECTURES


def test_factorized_vit_exports_two_matmuls_per_linear_and_ort_matches_torch(tmp_path):
    name, kwargs, size = ARCHITECTURES["vit"]
    dense = timm.create_model(name, num_classes=5, **kwargs).eval()
    torch.nn.init.normal_(dense.head.weight)
    low = trp_zoo.decompose(dense, rank=0.6).eval()
    plan = trp_zoo.rank_plan(low)
    assert len(plan) == 8  # qkv, proj, fc1, fc2 of both blocks

    def matmuls(model: torch.nn.Module, file: str) -> int:
        counts = export_onnx(model, tmp_path / file, size).op_counts
        return counts.get("MatMul", 0) + counts.get("Gemm", 0)

    # each factorized Linear is two MatMul/Gemm nodes where the dense one is one
    assert matmuls(low, "vit.onnx") - matmuls(trp_zoo.densify(low), "dense.onnx") == len(plan)
    graph = onnx.load(str(tmp_path / "vit.onnx")).graph
    consts = {t.name: tuple(t.dims) for t in graph.initializer}
    products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    # ... on activations: no node multiplies two weights (the dense weight is never formed)
    assert not [n.name for n in products if all(i in consts for i in n.input[:2])]
    thin = {shape for n in products for i in n.input[:2] if (shape := consts.get(i))}
    for layer, r in plan.items():
        m = low.get_submodule(layer)
        assert {(m.in_features, r), (r, m.out_features)} <= thin | {s[::-1] for s in thin}

    engine = build(
        low, tmp_path / "vit.ort.onnx", backend="onnxruntime", batch_sizes=(1, 4), input_size=size
    )
    try:
        x = torch.randn(3, *size)
        with torch.no_grad():
            expected = low(x)
        got = engine(x)
    finally:
        engine.close()
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert float((got - expected).norm() / expected.norm()) < 1e-5
