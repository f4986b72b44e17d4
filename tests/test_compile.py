"""`torch.compile` on every family and task: full-graph eval equal to eager, a compiled training step whose loss
equals eager's, no graph breaks (issue 29), and `train` with `compile=True`.

How the cost is split (compiling is slow, and CI has 2 cores):

- Whether a model compiles as one graph is decided by TorchDynamo, which turns the Python into a graph before
  any backend sees it; graph breaks, `fullgraph=True` failures and shape guards are the same whatever compiles
  the graph afterwards. So the default run checks with the cheap backends, a few seconds each: for every
  family x task, `torch._dynamo.explain` (0 breaks, eval and training) and the "eager" backend (Dynamo's graph
  run op by op: full-graph eval equals eager PyTorch within 1e-4); per task, a training step with "aot_eager"
  (AOTAutograd's joint forward/backward graph, where symbolic sizes meet the backward pass, run op by op: loss
  within 1e-4 of eager's, gradients too), on v1 classification and v2 segmentation, the two graphs that
  failed in issue 29.
- Inductor, the real compiler and what users get, turns those graphs into C++ kernels: a minute or two per
  graph on 2 cores. It runs on a representative subset marked slow: the v1 classification training step (the
  `InductorError` of issue 29) and v2 segmentation in eval, so both families, both tasks and both modes meet
  Inductor once.

Models are xx-small and MobileViTv2-0.5 at 64x64 (the smallest input with a resize in no block), with
realistic random weights; Dynamo's caches are reset around every test, so no test reuses another's graphs.
"""

import copy

import pytest
import torch

from mobilevit import auto
from mobilevit.tasks import CLASSIFICATION, FEATURE_EXTRACTION, SEGMENTATION
from mobilevit.testing_utils import fill_realistic_weights_

VARIANTS = ("xx-small", "mobilevitv2-0.5")
TASKS = (CLASSIFICATION, SEGMENTATION)  # with a loss: trained
CASES = [pytest.param(variant, task, id=f"{variant}-{task}") for variant in VARIANTS for task in TASKS]
EVAL_CASES = CASES + [pytest.param(variant, FEATURE_EXTRACTION, id=f"{variant}-backbone") for variant in VARIANTS]
# one training step per task, each family once
TRAINING_CASES = [pytest.param("xx-small", CLASSIFICATION, id=f"xx-small-{CLASSIFICATION}"),
                  pytest.param("mobilevitv2-0.5", SEGMENTATION, id=f"mobilevitv2-0.5-{SEGMENTATION}")]
SIZE, BATCH, NUM_LABELS = 64, 2, 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(variant, task):
    config = auto.new_config(variant, CLASSIFICATION if task == FEATURE_EXTRACTION else task, num_labels=NUM_LABELS)
    return fill_realistic_weights_(auto.new_model(config, task))


def _inputs(task, size=SIZE):
    pixel_values = torch.rand(BATCH, 3, size, size)
    shape = (BATCH,) if task == CLASSIFICATION else (BATCH, size, size)
    return pixel_values, torch.randint(0, NUM_LABELS, shape)


def _main_output(outputs) -> torch.Tensor:
    return outputs.logits if "logits" in outputs else outputs.last_hidden_state  # a head's, or the backbone's


def _assert_compiled_eval_matches_eager(model, backend, size=SIZE):
    model.eval()
    pixel_values, _ = _inputs(CLASSIFICATION, size)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        got = _main_output(compiled(pixel_values=pixel_values))
        want = _main_output(model(pixel_values=pixel_values))  # the default eval path: the fast path
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def _assert_compiled_step_matches_eager(model, task, backend):
    """One training step (dropout on, BatchNorm on batch statistics): same loss, same gradients."""
    model.train()
    twin = copy.deepcopy(model)
    pixel_values, labels = _inputs(task)
    torch.manual_seed(1)
    loss = torch.compile(model, backend=backend, fullgraph=True)(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    torch.manual_seed(1)  # the same dropout masks
    want = twin(pixel_values=pixel_values, labels=labels).loss
    want.backward()
    assert abs(loss.item() - want.item()) <= 1e-4, (loss.item(), want.item())
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters()):
        scale = max(1.0, twin_param.grad.abs().max().item())
        torch.testing.assert_close(param.grad, twin_param.grad, atol=1e-4 * scale, rtol=1e-3, msg=name)


# -- Dynamo: every family and task, cheap backends --------------------------------------------------------------
@pytest.mark.parametrize("variant, task", EVAL_CASES)
def test_no_graph_breaks_in_eval_or_training(variant, task):
    model = _model(variant, task)
    pixel_values, labels = _inputs(task)
    with torch.no_grad():
        explained = torch._dynamo.explain(model.eval())(pixel_values=pixel_values)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    if task == FEATURE_EXTRACTION:  # no loss to train
        return
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.train())(pixel_values=pixel_values, labels=labels)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("variant, task", EVAL_CASES)
def test_fullgraph_eval_equals_eager(variant, task):
    _assert_compiled_eval_matches_eager(_model(variant, task), backend="eager")


@pytest.mark.parametrize("variant, task", TRAINING_CASES)
def test_compiled_training_step_equals_eager(variant, task):
    _assert_compiled_step_matches_eager(_model(variant, task), task, backend="aot_eager")


def test_a_map_that_needs_resizing_compiles_too():
    """80x80: layer_4 and layer_5 maps of 5x5 and 3x3 (odd), which each block resizes to whole patches."""
    _assert_compiled_eval_matches_eager(_model("xx-small", CLASSIFICATION), backend="eager", size=80)


def test_a_wrong_input_still_gets_its_one_line_error():
    """Without `fullgraph` (Trainer, plain `torch.compile`) Dynamo runs the failing frame eagerly and our error
    comes as is; with `fullgraph=True`, Dynamo's error carries our message."""
    model = _model("xx-small", CLASSIFICATION).eval()
    two_channels = torch.rand(1, 2, SIZE, SIZE)
    message = r"pixel_values: expected 3 channels in dimension 1, got shape \(1, 2, 64, 64\)"
    with pytest.raises(ValueError, match=message):
        torch.compile(model, backend="eager")(pixel_values=two_channels)
    with pytest.raises(Exception, match=message):
        torch.compile(model, backend="eager", fullgraph=True)(pixel_values=two_channels)


def test_eager_mode_keeps_the_label_value_checks():
    """The label checks that read values are eager-only (a graph cannot branch on data): still there in eager."""
    model = _model("xx-small", CLASSIFICATION).train()
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 5\), got \[9\]"):
        model(pixel_values=torch.rand(BATCH, 3, SIZE, SIZE), labels=torch.tensor([1, 9]))


# -- Inductor: a representative subset -----------------------------------------------------------------------------
@pytest.mark.slow
def test_inductor_training_step_equals_eager():
    with torch._inductor.config.patch(fallback_random=True):  # dropout masks from eager's generator
        _assert_compiled_step_matches_eager(_model("xx-small", CLASSIFICATION), CLASSIFICATION, backend="inductor")


@pytest.mark.slow
def test_inductor_fullgraph_eval_equals_eager():
    _assert_compiled_eval_matches_eager(_model("mobilevitv2-0.5", SEGMENTATION), backend="inductor")


# -- mobilevit train --compile ---------------------------------------------------------------------------------
def test_train_cli_compile_flag_reaches_the_job(tmp_path):
    import argparse

    from mobilevit.training.cli import add_arguments, job_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--data", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert job_from_args(parser.parse_args(argv + ["--compile"])).compile is True
    assert job_from_args(parser.parse_args(argv)).compile is False


def test_an_unknown_compile_backend_is_refused_before_anything_is_written(tmp_path):
    from mobilevit.training import TrainJob
    from mobilevit.training.job import TrainError, validate_job

    job = TrainJob(task=CLASSIFICATION, data=tmp_path, output_dir=tmp_path / "out", compile=True,
                   compile_backend="nope")
    with pytest.raises(TrainError, match="compile_backend: expected a torch.compile backend such as .*inductor.*, "
                                         "got 'nope'"):
        validate_job(job)
    assert not (tmp_path / "out").exists()


def test_compiled_training_run_has_one_graph_per_input_size_and_no_breaks(tmp_path):
    """`train_and_save(compile=True)` with the multi-scale sampler on two sizes: two graphs, no recompile beyond
    them (the classification problem type is settled before the first step), no graph break, and a saved model."""
    import datasets
    from torch._dynamo.utils import counters

    from mobilevit.training import TrainJob, train_and_save
    from mobilevit.training.demo_data import load_digits_dataset

    data = load_digits_dataset(image_size=32)
    splits = datasets.DatasetDict({"train": data["train"].select(range(48)),
                                   "validation": data["validation"].select(range(8))})
    counters.clear()
    job = TrainJob(task=CLASSIFICATION, data=splits, output_dir=tmp_path / "out", epochs=1, batch_size=8,
                   image_size=32, eval_resize=32, multi_scale=True, multi_scale_range=(32, 64), logging_steps=100,
                   compile=True, compile_backend="eager")  # graphs and recompiles are Dynamo's: cheap backend
    result = train_and_save(job)
    assert isinstance(result.trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert counters["stats"]["unique_graphs"] == 2  # 32x32 and 64x64
    assert not counters["graph_break"]
    assert result.metrics["training"]["compile"] is True
    assert (tmp_path / "out" / "model.safetensors").is_file()
