import copy
import shutil
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import trp_zoo
from runtime.errors import ExportError
from runtime.export import MIN_OPSET, check_onnx, export_onnx, onnx_io
from tests.runtime_models import INPUT_SIZE, tiny_factorized, tiny_resnet


@pytest.fixture(scope="module")
def factorized_export(tmp_path_factory):
    model = tiny_factorized("channel")
    path = tmp_path_factory.mktemp("export") / "factorized.onnx"
    return model, export_onnx(model, path, INPUT_SIZE)


def test_export_is_checked_dynamic_and_matches_torch(factorized_export):
    model, exported = factorized_export
    proto = onnx.load(str(exported.path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    onnx.checker.check_model(proto, full_check=True)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch
    assert exported.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, *INPUT_SIZE)
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)
    assert onnx_io(exported.path) == ("input", "logits", INPUT_SIZE)


def test_factorized_convs_export_as_two_plain_convs(factorized_export):
    model, exported = factorized_export
    n_factorized = len(trp_zoo.rank_plan(model))
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    ops = Counter(n.op_type for n in onnx.load(str(exported.path)).graph.node)
    assert ops["Conv"] == n_convs  # every FactorizedConv2d: its two nn.Conv2d, nothing else
    assert n_factorized > 0 and exported.op_counts["Conv"] == n_convs
    assert "BatchNormalization" not in ops  # folded into the convs
    dense = export_onnx(trp_zoo.densify(model), exported.path.with_name("dense.onnx"), INPUT_SIZE)
    assert exported.op_counts["Conv"] - dense.op_counts["Conv"] == n_factorized


def test_spatial_scheme_exports_and_matches(tmp_path):
    model = tiny_factorized("spatial", rank=4)
    exported = export_onnx(model, tmp_path / "spatial.onnx", INPUT_SIZE)
    assert exported.max_abs_diff < 1e-4
    kernels = {
        tuple(a.ints)
        for n in onnx.load(str(exported.path)).graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "kernel_shape"
    }
    assert {(3, 1), (1, 3)} <= kernels


def test_corrupt_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        check_onnx(bad)
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        onnx_io(bad)


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset 13 is too old"):
        export_onnx(tiny_resnet(), tmp_path / "m.onnx", INPUT_SIZE, opset=13)


def test_opset_newer_than_onnx_is_refused_before_exporting(tmp_path):
    """The exporter used to fall back to its own opset, with logged tracebacks, and the
    build recorded the opset asked for."""
    newest = onnx.defs.onnx_opset_version()
    asked = newest + 1
    with pytest.raises(ValueError, match=rf"opset {asked} is newer than .* use 17 to {newest}"):
        export_onnx(tiny_resnet(), tmp_path / "m.onnx", INPUT_SIZE, opset=asked)
    assert not list(tmp_path.iterdir())


def test_an_exporter_failure_is_one_line_naming_its_cause(tmp_path, monkeypatch):
    """torch's exporter error spans screens, with terminal colour codes; the cause and the
    model line it points at are what a user needs."""

    def failing_export(*args, **kwargs):
        cause = ValueError(
            "Cannot view a tensor with shape [1, 16, 6, 64] as (s77, 16, 384)!\n\nOriginal "
            'traceback:\nFile "/x/timm/models/vit.py", line 563, in forward\n  File '
            '"/x/timm/models/vision_transformer_relpos.py", line 114, in forward\n    x = x.view()'
        )
        raise RuntimeError(
            "Failed to decompose the FX graph. \x1b[96mThis is step 2/3\x1b[0m.\n- Create an "
            "issue\n\n## Exception summary\n" + str(cause)
        ) from cause

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(ExportError) as err:
        export_onnx(tiny_resnet(), tmp_path / "m.onnx", INPUT_SIZE, reuse=False)
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text
    assert "ValueError: Cannot view a tensor with shape [1, 16, 6, 64] as (s77, 16, 384)!" in text
    assert "(at vision_transformer_relpos.py:114)" in text


def test_reexport_of_the_same_model_is_reused_and_changed_weights_are_not(factorized_export):
    model, first = factorized_export
    stamp = first.path.stat().st_mtime_ns
    again = export_onnx(model, first.path, INPUT_SIZE)
    assert again == first and first.path.stat().st_mtime_ns == stamp
    changed_model = copy.deepcopy(model)
    with torch.no_grad():
        changed_model.fc.bias.add_(1.0)
    changed = export_onnx(changed_model, first.path.with_name("changed.onnx"), INPUT_SIZE)
    assert changed.sha256 != first.sha256
    shutil.copy(changed.path, first.path)  # a file that no longer matches its record
    assert export_onnx(model, first.path, INPUT_SIZE).sha256 == first.sha256  # re-exported
